//! Validated names: the rules a tenant id, a topic or a step name keeps,
//! and the macro that makes each a type.

/// Why a name (tenant id, topic, step name, header) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidName {
    /// What was being named: `"tenant id"`, `"topic"`, `"step name"`, `"header name"`.
    pub kind: &'static str,
    /// The rejected input (cut to 80 characters).
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

pub(super) fn validate(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: fn(char) -> bool,
    rule: &'static str,
) -> Result<(), InvalidName> {
    let reject = |reason| {
        Err(InvalidName {
            kind,
            value: value.chars().take(80).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return reject("must not be empty");
    }
    if value.len() > max {
        return reject("is too long");
    }
    if !value.chars().all(allowed) {
        return reject(rule);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:expr, $rule:literal) => {
        name_type!($(#[$doc])* $name, $kind, $max, $allowed, $rule, |_: &str| Ok(()));
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:expr, $rule:literal, $reserved:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps a name.
            ///
            /// # Errors
            /// [`InvalidName`] if the name is empty, too long or has a character
            /// outside the allowed set.
            pub fn new(value: impl AsRef<str>) -> Result<Self, InvalidName> {
                let value = value.as_ref();
                validate($kind, value, $max, $allowed, $rule)?;
                let reserved: fn(&str) -> Result<(), &'static str> = $reserved;
                reserved(value).map_err(|reason| InvalidName {
                    kind: $kind,
                    value: value.chars().take(80).collect(),
                    reason,
                })?;
                Ok($name(Arc::from(value)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;
            fn try_from(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(super) use name_type;
