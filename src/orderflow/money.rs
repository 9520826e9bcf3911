//! Money: integer minor units and a currency, never a float.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Money went wrong: bad currency, mixed currencies, overflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// Not an ISO 4217 code (three uppercase ASCII letters).
    #[error("invalid currency code {0:?}: expected three uppercase letters such as \"USD\"")]
    InvalidCurrency(String),
    /// Two amounts in different currencies were combined.
    #[error("cannot combine {left} and {right}")]
    CurrencyMismatch {
        /// The first currency.
        left: Currency,
        /// The second currency.
        right: Currency,
    },
    /// The result does not fit in 64 bits of minor units.
    #[error("amount out of range")]
    Overflow,
}

/// An ISO 4217 currency code, such as `USD`.
///
/// ```
/// use flowline::orderflow::Currency;
/// let usd = Currency::new("USD")?;
/// assert_eq!(usd.as_str(), "USD");
/// assert!(Currency::new("usd").is_err());
/// # Ok::<(), flowline::orderflow::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// US dollars.
    pub const USD: Currency = Currency(*b"USD");
    /// Euros.
    pub const EUR: Currency = Currency(*b"EUR");

    /// Parses a three-letter uppercase code.
    ///
    /// # Errors
    /// [`MoneyError::InvalidCurrency`] for anything else.
    pub fn new(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(MoneyError::InvalidCurrency(code.to_string())),
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters get in, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Digits after the decimal point: 0 for currencies without minor units
    /// (yen, won, ...), 3 for the dinars that use thousandths, 2 otherwise.
    pub fn exponent(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::new(&code).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: whole minor units (cents) of one currency.
///
/// ```
/// use flowline::orderflow::{Currency, Money};
/// let price = Money::new(1_999, Currency::USD);
/// let total = price.times(3)?.plus(Money::new(1, Currency::USD))?;
/// assert_eq!(total.to_string(), "59.98 USD");
/// # Ok::<(), flowline::orderflow::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Money {
    /// Minor units (cents for USD); negative for refunds and credits.
    pub minor: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// An amount in minor units.
    pub const fn new(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    /// Nothing, in `currency`.
    pub const fn zero(currency: Currency) -> Self {
        Money { minor: 0, currency }
    }

    /// The sum.
    ///
    /// # Errors
    /// [`MoneyError::CurrencyMismatch`] or [`MoneyError::Overflow`].
    pub fn plus(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    /// The difference.
    ///
    /// # Errors
    /// [`MoneyError::CurrencyMismatch`] or [`MoneyError::Overflow`].
    pub fn minus(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    /// The amount times a quantity.
    ///
    /// # Errors
    /// [`MoneyError::Overflow`].
    pub fn times(self, quantity: u32) -> Result<Money, MoneyError> {
        let minor = self
            .minor
            .checked_mul(i64::from(quantity))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let units = self.minor.unsigned_abs();
        if exponent == 0 {
            return write!(f, "{sign}{units} {}", self.currency);
        }
        let scale = 10u64.pow(exponent);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            units / scale,
            units % scale,
            self.currency,
            width = exponent as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currencies_are_three_uppercase_letters() {
        for bad in ["", "US", "USDX", "usd", "U$D", "ÜSD"] {
            assert!(Currency::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Currency::new("EUR").unwrap(), Currency::EUR);
        let json = serde_json::to_string(&Currency::USD).unwrap();
        assert_eq!(json, "\"USD\"");
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    #[test]
    fn amounts_print_in_major_units() {
        assert_eq!(Money::new(1_234, Currency::USD).to_string(), "12.34 USD");
        assert_eq!(Money::new(-5, Currency::EUR).to_string(), "-0.05 EUR");
        let yen = Currency::new("JPY").unwrap();
        assert_eq!(Money::new(1_234, yen).to_string(), "1234 JPY");
        let dinar = Currency::new("KWD").unwrap();
        assert_eq!(Money::new(1_234, dinar).to_string(), "1.234 KWD");
    }

    #[test]
    fn mixed_currencies_and_overflow_are_errors() {
        let usd = Money::new(1, Currency::USD);
        let eur = Money::new(1, Currency::EUR);
        assert!(matches!(
            usd.plus(eur),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert_eq!(
            Money::new(i64::MAX, Currency::USD).plus(usd),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::new(i64::MAX / 2 + 1, Currency::USD).times(2),
            Err(MoneyError::Overflow)
        );
    }

    proptest! {
        #[test]
        fn plus_then_minus_gives_back_the_amount(a in -1_000_000_000i64..1_000_000_000, b in -1_000_000_000i64..1_000_000_000) {
            let x = Money::new(a, Currency::USD);
            let y = Money::new(b, Currency::USD);
            prop_assert_eq!(x.plus(y).unwrap().minus(y).unwrap(), x);
        }
    }
}
