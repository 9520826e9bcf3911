//! The tenant ids the engine keeps for itself: the unforgeable system tenant
//! and the reserved names.

use serde::Deserialize;

use super::event::{InvalidName, TenantId};

/// How the system tenant is written down: with a character no tenant id may
/// hold, so [`TenantId::new`] can never produce it.
const SYSTEM_TENANT: &str = "@system";

impl TenantId {
    /// Names refused by [`TenantId::new`] (compared without regard to case),
    /// so that no outside caller can pass for the engine's own work. The
    /// HTTP layer answers `400` to a tenant header that holds one.
    pub const RESERVED: &'static [&'static str] = &["system", "flowline", "admin"];

    /// The engine's own tenant: cron ticks run under it unless a cron step
    /// names another, and only its executions may emit into other tenants.
    ///
    /// No string, header or payload produces it: its name, `@system`, holds a
    /// character that [`TenantId::new`] refuses, and deserializing a
    /// `TenantId` goes through `new`. Only the engine makes it, and a storage
    /// adapter restores it with [`from_stored`](Self::from_stored).
    ///
    /// ```
    /// use flowline::TenantId;
    /// let system = TenantId::system();
    /// assert!(system.is_system());
    /// assert!(serde_json::from_str::<TenantId>(r#""@system""#).is_err());
    /// assert!(!TenantId::new("shop").unwrap().is_system());
    /// ```
    pub fn system() -> Self {
        TenantId::unchecked(SYSTEM_TENANT)
    }

    /// True for [`TenantId::system`].
    pub fn is_system(&self) -> bool {
        self.as_str() == SYSTEM_TENANT
    }

    /// True when `name` is one of [`RESERVED`](Self::RESERVED), in any case.
    pub fn is_reserved(name: &str) -> bool {
        Self::RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
    }

    /// Restores a tenant id that an adapter stored (its [`as_str`](Self::as_str)),
    /// the system tenant included; anything else goes through [`new`](Self::new).
    /// `"system"`, the system tenant's name before it was made unforgeable,
    /// is read as the system tenant too, so work stored by an older version
    /// keeps its tenant.
    ///
    /// For storage adapters reading back what the engine gave them, never for
    /// outside input: that is what [`new`](Self::new) is for.
    ///
    /// # Errors
    /// [`InvalidName`], as [`new`](Self::new) gives it.
    pub fn from_stored(stored: &str) -> Result<Self, InvalidName> {
        if stored == SYSTEM_TENANT || stored == LEGACY_SYSTEM_TENANT {
            return Ok(Self::system());
        }
        Self::new(stored)
    }

    /// Deserializes a stored tenant id ([`from_stored`](Self::from_stored)):
    /// for the `tenant` of an [`Envelope`], which only adapters read back.
    pub(crate) fn deserialize_stored<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_stored(&s).map_err(serde::de::Error::custom)
    }
}

/// The system tenant's name in stores written before it was made unforgeable.
const LEGACY_SYSTEM_TENANT: &str = "system";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ids_come_back_as_they_were_and_the_legacy_name_as_the_system_tenant() {
        assert_eq!(TenantId::from_stored("@system"), Ok(TenantId::system()));
        assert_eq!(TenantId::from_stored("system"), Ok(TenantId::system()));
        assert_eq!(
            TenantId::from_stored("shop-1").map(|t| t.is_system()),
            Ok(false)
        );
        assert!(TenantId::from_stored("a/b").is_err());
        assert!(TenantId::from_stored("ADMIN").is_err());
    }

    #[test]
    fn reserved_names_are_refused_in_any_case() {
        for name in ["system", "System", "FLOWLINE", "admin", "@system"] {
            assert!(TenantId::new(name).is_err(), "{name}");
        }
        assert!(TenantId::new("systems").is_ok());
    }
}
