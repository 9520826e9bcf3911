//! Shared dependencies of the handlers (a mail client, a connection pool, a
//! configuration), given to the engine once and lent to every execution by
//! type through [`StepContext::data`](crate::StepContext::data), so that
//! handlers need not clone them into every closure.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The handlers' dependencies, one value per type.
#[derive(Clone, Default)]
pub(crate) struct AppData {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl AppData {
    /// Keeps `value`, replacing an earlier value of its type.
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    /// The value of type `T`.
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Result<&T, MissingData> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref::<T>())
            .ok_or(MissingData {
                type_name: std::any::type_name::<T>(),
            })
    }
}

impl fmt::Debug for AppData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppData")
            .field("values", &self.values.len())
            .finish()
    }
}

/// A handler asked for data of a type the engine was not given (see
/// [`EngineBuilder::data`](crate::EngineBuilder::data)). A wiring mistake of
/// the host, which no retry fixes: `?` on it is permanent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the engine holds no data of type {type_name}: give it with EngineBuilder::data")]
pub struct MissingData {
    type_name: &'static str,
}

impl MissingData {
    /// The name of the type asked for.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}
