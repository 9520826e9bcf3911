//! The [`inbound!`](crate::inbound) macro: one step, several event types.

/// Declares an enum with one variant per event type a step subscribes to, and
/// implements [`Inbound`](crate::Inbound) for it, so that
/// [`Step::event`](crate::Step::event) subscribes the step to every topic and
/// its handler gets the decoded event as a variant.
///
/// ```
/// use flowline::{inbound, Event, Step, StepContext, StepError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Paid { order: String }
/// impl Event for Paid { const TOPIC: &'static str = "order.paid"; }
///
/// #[derive(Serialize, Deserialize)]
/// struct Cancelled { order: String }
/// impl Event for Cancelled { const TOPIC: &'static str = "order.cancelled"; }
///
/// inbound! {
///     /// What the ledger hears.
///     pub enum LedgerInput {
///         Paid(Paid),
///         Cancelled(Cancelled),
///     }
/// }
///
/// let step = Step::event::<LedgerInput>("ledger").handle(|ctx: StepContext, input| async move {
///     match input {
///         LedgerInput::Paid(p) => ctx.put(&format!("paid/{}", p.order), &true)?,
///         LedgerInput::Cancelled(c) => ctx.delete(&format!("paid/{}", c.order))?,
///     }
///     Ok::<_, StepError>(())
/// });
/// assert_eq!(step.name(), "ledger");
/// ```
#[macro_export]
macro_rules! inbound {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $name {
            $(
                #[allow(missing_docs)]
                $variant($ty)
            ),+
        }

        impl $crate::Inbound for $name {
            fn topics() -> ::std::vec::Vec<&'static str> {
                ::std::vec![$(<$ty as $crate::Event>::TOPIC),+]
            }

            fn decode(
                envelope: &$crate::Envelope,
            ) -> ::std::result::Result<Self, $crate::DecodeError> {
                $(
                    if envelope.topic.as_str() == <$ty as $crate::Event>::TOPIC {
                        return envelope.decode::<$ty>().map($name::$variant);
                    }
                )+
                ::std::result::Result::Err($crate::DecodeError::UnexpectedTopic {
                    expected: <Self as $crate::Inbound>::topics(),
                    found: envelope.topic.clone(),
                })
            }
        }
    };
}
