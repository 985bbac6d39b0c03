//! Resource quantities (`100m`, `64Mi`, `1.5`, `1e3`): the one parser every part
//! of berth uses, after apimachinery's `resource.ParseQuantity`, with exact
//! comparison and arithmetic that reports overflow instead of wrapping.
//!
//! A quantity is kept as `mantissa × 10^exponent`, exactly: binary suffixes are
//! powers of two, which are whole numbers, so `1.5Gi` is `1610612736 × 10^0`.
//! As upstream, anything finer than a nano-unit is rounded up (away from zero)
//! to `1n`. Unlike upstream (which switches to arbitrary precision), the mantissa
//! holds at most 38 digits: a longer one is [`QuantityError::TooLarge`].

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

/// Why a string is not a usable quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<signedNumber><suffix>` (upstream's `ErrFormatWrong`, same words).
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Invalid,
    /// Well formed, but more digits or a larger exponent than berth represents.
    #[error("quantity is too large")]
    TooLarge,
}

/// The most significant digits a mantissa keeps (10^38 < 2^127).
const MAX_DIGITS: u32 = 38;
/// The finest resolution: nano-units (upstream rounds finer values up to `1n`).
const MIN_EXPONENT: i32 = -9;
/// Exponents beyond this are refused (upstream parses them into an `inf.Dec`).
const MAX_EXPONENT: i32 = 1000;

/// An exact quantity: `mantissa × 10^exponent`, normalised so that the mantissa
/// has no trailing zero (zero is `0 × 10^0`). Equal values have equal fields, so
/// the derived `Eq` and `Hash` are value equality (`1000m == 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Quantity {
    mantissa: i128,
    exponent: i32,
}

fn digits(n: i128) -> u32 {
    n.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1)
}

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity {
        mantissa: 0,
        exponent: 0,
    };

    /// Normalise `mantissa × 10^exponent`; `None` when it does not fit.
    fn normalised(mut mantissa: i128, mut exponent: i32) -> Option<Quantity> {
        if mantissa == 0 {
            return Some(Quantity::ZERO);
        }
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent = exponent.checked_add(1)?;
        }
        if exponent < MIN_EXPONENT {
            // Round to nano-units, away from zero (upstream's `inf.RoundUp` at `Nano`).
            let shift = u32::try_from(MIN_EXPONENT - exponent).ok()?;
            let negative = mantissa < 0;
            let magnitude = mantissa.unsigned_abs();
            let rounded = match 10u128.checked_pow(shift) {
                Some(div) => magnitude.div_ceil(div),
                None => 1,
            };
            let rounded = i128::try_from(rounded).ok()?;
            return Quantity::normalised(if negative { -rounded } else { rounded }, MIN_EXPONENT);
        }
        if exponent > MAX_EXPONENT || digits(mantissa) > MAX_DIGITS {
            return None;
        }
        Some(Quantity { mantissa, exponent })
    }

    /// Parse `<signedNumber><suffix>`: a decimal SI suffix (`n u m "" k M G T P E`),
    /// a binary one (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`e3`, `E-2`).
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(split);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(QuantityError::Invalid);
        }
        // value = digits × 10^ten × 2^two
        let (ten, two): (i32, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            other => {
                let exp = other
                    .strip_prefix(['e', 'E'])
                    .ok_or(QuantityError::Invalid)?;
                let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QuantityError::Invalid);
                }
                let exp: i32 = exp.parse().map_err(|_| QuantityError::TooLarge)?;
                if exp.unsigned_abs() > MAX_EXPONENT.unsigned_abs() {
                    return Err(QuantityError::TooLarge);
                }
                (exp, 0)
            }
        };
        let frac = frac.trim_end_matches('0');
        let all = format!("{whole}{frac}");
        let significant = all.trim_start_matches('0');
        if significant.is_empty() {
            return Ok(Quantity::ZERO);
        }
        // Digits beyond what a nano-unit resolves only round the last one up.
        let frac_len = i32::try_from(frac.len()).map_err(|_| QuantityError::TooLarge)?;
        let mut exponent = ten - frac_len;
        let mut kept = significant;
        let mut round_up = false;
        let max = usize::try_from(MAX_DIGITS).unwrap_or(38);
        if kept.len() > max && exponent < MIN_EXPONENT {
            let drop = usize::try_from(MIN_EXPONENT - exponent)
                .unwrap_or(usize::MAX)
                .min(kept.len() - max);
            round_up = kept[kept.len() - drop..].bytes().any(|b| b != b'0');
            kept = &kept[..kept.len() - drop];
            exponent += i32::try_from(drop).map_err(|_| QuantityError::TooLarge)?;
        }
        if kept.len() > max {
            return Err(QuantityError::TooLarge);
        }
        let mut mantissa: i128 = kept.parse().map_err(|_| QuantityError::TooLarge)?;
        if round_up {
            mantissa += 1;
        }
        mantissa = mantissa
            .checked_mul(1i128 << two)
            .ok_or(QuantityError::TooLarge)?;
        if negative {
            mantissa = -mantissa;
        }
        Quantity::normalised(mantissa, exponent).ok_or(QuantityError::TooLarge)
    }

    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// -1, 0 or 1.
    pub fn signum(&self) -> i32 {
        self.mantissa.signum() as i32
    }

    /// The value scaled by `10^-scale` and rounded up (towards +∞), saturating
    /// at the bounds of `i64` (`ScaledValue`).
    fn scaled(&self, scale: i32) -> i64 {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        let shift = self.exponent - scale;
        if self.mantissa == 0 {
            return 0;
        }
        if shift >= 0 {
            let factor = u32::try_from(shift)
                .ok()
                .and_then(|s| 10i128.checked_pow(s));
            match factor.and_then(|f| self.mantissa.checked_mul(f)) {
                Some(v) => clamp(v),
                None => clamp(self.mantissa.signum() * i128::MAX),
            }
        } else {
            match u32::try_from(-shift)
                .ok()
                .and_then(|s| 10i128.checked_pow(s))
            {
                Some(div) => clamp(
                    self.mantissa.div_euclid(div) + i128::from(self.mantissa.rem_euclid(div) != 0),
                ),
                None => i64::from(self.mantissa > 0),
            }
        }
    }

    /// The value in thousandths, rounded up (`MilliValue`): millicores for CPU.
    /// Saturates at the bounds of `i64`.
    pub fn milli_value(&self) -> i64 {
        self.scaled(-3)
    }

    /// The value as an integer, rounded up (`Value`): bytes for memory and
    /// storage, a count for pods and extended resources. Saturates at `i64`'s bounds.
    pub fn value(&self) -> i64 {
        self.scaled(0)
    }

    /// `self + other`, or `None` if the sum has more digits than berth represents.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        if self.is_zero() {
            return Some(*other);
        }
        if other.is_zero() {
            return Some(*self);
        }
        let exponent = self.exponent.min(other.exponent);
        let widen = |q: &Quantity| {
            let shift = u32::try_from(q.exponent - exponent).ok()?;
            q.mantissa.checked_mul(10i128.checked_pow(shift)?)
        };
        Quantity::normalised(widen(self)?.checked_add(widen(other)?)?, exponent)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        self.checked_add(&Quantity {
            mantissa: other.mantissa.checked_neg()?,
            exponent: other.exponent,
        })
    }

    /// The sum of `items`, or `None` on overflow.
    pub fn checked_sum<'a>(items: impl IntoIterator<Item = &'a Quantity>) -> Option<Quantity> {
        items
            .into_iter()
            .try_fold(Quantity::ZERO, |acc, q| acc.checked_add(q))
    }
}

impl Ord for Quantity {
    /// Exact comparison (`Quantity.Cmp`), without overflow: by sign, then by order
    /// of magnitude, then by the aligned mantissas (which then differ in length by
    /// fewer than [`MAX_DIGITS`] digits, so aligning one fits).
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.mantissa.signum().cmp(&other.mantissa.signum());
        if by_sign != Ordering::Equal || self.mantissa == 0 {
            return by_sign;
        }
        let magnitude = |q: &Quantity| i64::from(digits(q.mantissa)) + i64::from(q.exponent);
        let by_magnitude = magnitude(self).cmp(&magnitude(other));
        let ordering = if by_magnitude != Ordering::Equal {
            by_magnitude
        } else {
            let exponent = self.exponent.min(other.exponent);
            let widen = |q: &Quantity| {
                let shift = u32::try_from(q.exponent - exponent).unwrap_or(0);
                q.mantissa
                    .unsigned_abs()
                    .saturating_mul(10u128.saturating_pow(shift))
            };
            widen(self).cmp(&widen(other))
        };
        if self.mantissa < 0 {
            ordering.reverse()
        } else {
            ordering
        }
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl TryFrom<&ApiQuantity> for Quantity {
    type Error = QuantityError;
    fn try_from(q: &ApiQuantity) -> Result<Self, Self::Error> {
        Quantity::parse(&q.0)
    }
}

impl fmt::Display for Quantity {
    /// Plain decimal (`1.5`, `0.001`, `1073741824`, `1e40` for long exponents):
    /// parsing the text gives back the same quantity.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exponent > 18
            || (self.exponent > 0
                && digits(self.mantissa) + self.exponent.unsigned_abs() > MAX_DIGITS)
        {
            return write!(f, "{}e{}", self.mantissa, self.exponent);
        }
        if self.exponent >= 0 {
            let zeros = "0".repeat(usize::try_from(self.exponent).unwrap_or(0));
            return write!(f, "{}{zeros}", self.mantissa);
        }
        let digits = self.mantissa.unsigned_abs().to_string();
        let point = usize::try_from(-self.exponent).unwrap_or(0);
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if digits.len() > point {
            let (int, frac) = digits.split_at(digits.len() - point);
            write!(f, "{sign}{int}.{frac}")
        } else {
            write!(f, "{sign}0.{}{digits}", "0".repeat(point - digits.len()))
        }
    }
}

/// A CPU quantity (`100m`, `0.5`, `2`) in millicores, rounded up.
pub fn cpu_millis(q: &ApiQuantity) -> Result<i64, QuantityError> {
    Quantity::try_from(q).map(|q| q.milli_value())
}

/// A memory, storage or count quantity (`64Mi`, `1G`, `1000`) as an integer, rounded up.
pub fn int_value(q: &ApiQuantity) -> Result<i64, QuantityError> {
    Quantity::try_from(q).map(|q| q.value())
}

/// A size or limit, which may not be negative, as an integer rounded up and
/// saturating; `None` when it does not parse or is negative.
pub fn non_negative_int_value(q: &ApiQuantity) -> Option<u64> {
    let v = Quantity::try_from(q).ok()?;
    if v.signum() < 0 {
        return None;
    }
    u64::try_from(v.value()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn api(s: &str) -> ApiQuantity {
        ApiQuantity(s.to_string())
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis(&api("100m")), Ok(100));
        assert_eq!(cpu_millis(&api("0.5")), Ok(500));
        assert_eq!(cpu_millis(&api("2")), Ok(2000));
        assert_eq!(cpu_millis(&api(".25")), Ok(250));
        assert_eq!(cpu_millis(&api("1.")), Ok(1000));
        assert_eq!(cpu_millis(&api("0.1m")), Ok(1), "rounded up");
        assert_eq!(cpu_millis(&api("1e3")), Ok(1_000_000));
        assert_eq!(cpu_millis(&api("+1")), Ok(1000));
        assert_eq!(cpu_millis(&api("-1")), Ok(-1000));
        assert_eq!(cpu_millis(&api("500u")), Ok(1));
        assert_eq!(cpu_millis(&api("0")), Ok(0));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(int_value(&api("64Mi")), Ok(64 << 20));
        assert_eq!(int_value(&api("1G")), Ok(1_000_000_000));
        assert_eq!(int_value(&api("1000")), Ok(1000));
        assert_eq!(int_value(&api("1.5Ki")), Ok(1536));
        assert_eq!(int_value(&api("1k")), Ok(1000));
        assert_eq!(int_value(&api("1E")), Ok(1_000_000_000_000_000_000));
        assert_eq!(int_value(&api("1Ei")), Ok(1 << 60));
        assert_eq!(int_value(&api("1.5")), Ok(2), "rounded up");
        assert_eq!(int_value(&api("129e6")), Ok(129_000_000));
        assert_eq!(int_value(&api("12E-1")), Ok(2));
    }

    #[test]
    fn bad_quantities() {
        for bad in [
            "", "abc", "1Qi", "1 Mi", " 1", "1.2.3", ".", "Mi", "1e", "1e+", "--1", "1mm", "0x10",
        ] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Invalid), "{bad:?}");
        }
        assert_eq!(int_value(&api("16Ei")), Ok(i64::MAX), "saturated");
        assert_eq!(
            Quantity::parse("1e99999999999999999999"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(
            Quantity::parse("99999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge)
        );
        // Tiny but non-zero rounds up to a thousandth.
        assert_eq!(Quantity::parse("1e-900").map(|q| q.milli_value()), Ok(1));
    }

    /// The table of apimachinery's `TestQuantityParse` that berth represents
    /// (values, not their canonical strings).
    #[test]
    fn parses_like_apimachinery() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("0n", 0),
            ("0u", 0),
            ("0m", 0),
            ("0Ki", 0),
            ("0k", 0),
            ("0Mi", 0),
            ("0.0", 0),
            ("-0", 0),
            ("1", 1000),
            ("1k", 1_000_000),
            ("1Ki", 1_024_000),
            ("8Ki", 8_192_000),
            ("7Mi", 7 * 1024 * 1024 * 1000),
            ("1.5", 1500),
            ("1.5Ki", 1536 * 1000),
            ("0.5", 500),
            ("0.001", 1),
            ("0.0001", 1),
            (".5", 500),
            ("5.", 5000),
            ("100m", 100),
            ("1.0001", 1001),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("1e+3", 1_000_000),
            ("+1", 1000),
            ("-1", -1000),
            ("-100m", -100),
            ("-1.5", -1500),
            ("-0.0001", 0),
            ("12e6", 12_000_000_000),
            ("1n", 1),
            ("1u", 1),
            ("1000u", 1),
            ("1000000n", 1),
        ];
        for (s, milli) in cases {
            assert_eq!(q(s).milli_value(), *milli, "{s}");
        }
        for bad in [
            "", "1.1.1", "1+1", "1 ", " 1", "1i", "1Xi", "e3", "1e", "1e+", "1ee3", "1.e3.2", "Mi",
            ".", "-", "+", "1KI", "1mi", "1 Ki", "1e3.5", "1Mii", "1e--3",
        ] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Invalid), "{bad:?}");
        }
        for too_large in [
            "1e1001",
            "1e99999999999",
            "123456789012345678901234567890123456789",
        ] {
            assert_eq!(
                Quantity::parse(too_large),
                Err(QuantityError::TooLarge),
                "{too_large}"
            );
        }
    }

    #[test]
    fn values_round_up() {
        assert_eq!(q("200Mi").value(), 200 * 1024 * 1024);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("1.5Gi").value(), 1536 * 1024 * 1024);
        assert_eq!(q("100m").value(), 1);
        assert_eq!(q("-1.5").value(), -1);
        assert_eq!(q("1e-99").value(), 1);
        assert_eq!(q("1e-99").milli_value(), 1);
        // Finer than a nano-unit: rounded up to 1n, away from zero.
        assert_eq!(q("0.1n"), q("1n"));
        assert_eq!(q("-0.1n"), q("-1n"));
        assert_eq!(
            q("1.0000000000000000000000000000000000000000000001"),
            q("1.000000001")
        );
    }

    #[test]
    fn sizes_are_not_negative() {
        let size = |s: &str| non_negative_int_value(&ApiQuantity(s.into()));
        assert_eq!(size("64Mi"), Some(64 << 20));
        assert_eq!(size("1.5"), Some(2));
        assert_eq!(size("0"), Some(0));
        assert_eq!(size("-1Gi"), None);
        assert_eq!(size("-0.5"), None);
        assert_eq!(size("1Xi"), None);
        assert_eq!(size("1e-99"), Some(1));
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(q("1T").milli_value(), 1_000_000_000_000_000);
        assert_eq!(q("99Ei").value(), i64::MAX);
        assert_eq!(q("99Ei").milli_value(), i64::MAX);
        assert_eq!(q("-99Ei").milli_value(), i64::MIN);
        assert_eq!(q("1e1000").value(), i64::MAX);
    }

    #[test]
    fn compares_values_not_strings() {
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("64Mi"), q("67108864"));
        assert_eq!(q("1k"), q("1e3"));
        assert!(q("1Ki") > q("1k"));
        assert!(q("-1") < q("1m"));
        assert!(q("-2") < q("-1"));
        assert!(q("1e1000") > q("99Ei"));
        assert!(q("1n") < q("1u"));
        assert!(q("1n") > Quantity::ZERO);
    }

    #[test]
    fn adds_exactly_or_reports_overflow() {
        assert_eq!(q("1").checked_add(&q("500m")), Some(q("1.5")));
        assert_eq!(q("1Gi").checked_sub(&q("1Gi")), Some(Quantity::ZERO));
        assert_eq!(q("1e1000").checked_add(&q("1n")), None);
        assert_eq!(
            Quantity::checked_sum(&[q("100m"), q("200m"), q("0.7")]),
            Some(q("1"))
        );
    }

    #[test]
    fn displays_parseable_text() {
        for (s, shown) in [
            ("1.5", "1.5"),
            ("100m", "0.1"),
            ("1n", "0.000000001"),
            ("64Mi", "67108864"),
            ("-2.5k", "-2500"),
            ("1e40", "1e40"),
            ("0", "0"),
        ] {
            assert_eq!(q(s).to_string(), shown);
        }
    }

    proptest! {
        /// No input panics; what parses is displayed as text that parses back to it.
        #[test]
        fn any_text_parses_or_errs(s in "\\PC{0,40}") {
            if let Ok(v) = Quantity::parse(&s) {
                prop_assert_eq!(Quantity::parse(&v.to_string()), Ok(v));
                let _ = (v.value(), v.milli_value());
            }
        }

        #[test]
        fn quantity_shaped_text_round_trips(
            sign in "[+-]?", int in "[0-9]{0,25}", frac in "(\\.[0-9]{0,15})?",
            suffix in "(|n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[+-]?[0-9]{1,3}|E[0-9]{1,2})",
        ) {
            let s = format!("{sign}{int}{frac}{suffix}");
            match Quantity::parse(&s) {
                Ok(v) => prop_assert_eq!(Quantity::parse(&v.to_string()), Ok(v)),
                Err(QuantityError::Invalid) => prop_assert!(int.is_empty() && frac.len() <= 1),
                Err(QuantityError::TooLarge) => {}
            }
        }

        /// Addition is exact where it fits: commutative, and undone by subtraction;
        /// the order agrees with it.
        #[test]
        fn arithmetic_agrees_with_order(a in -10i64.pow(15)..10i64.pow(15), b in -10i64.pow(15)..10i64.pow(15), sa in -9i32..12, sb in -9i32..12) {
            let x = Quantity::normalised(i128::from(a), sa).unwrap_or_default();
            let y = Quantity::normalised(i128::from(b), sb).unwrap_or_default();
            let sum = x.checked_add(&y);
            prop_assert_eq!(sum, y.checked_add(&x));
            if let Some(sum) = sum {
                prop_assert_eq!(sum.checked_sub(&y), Some(x));
                prop_assert_eq!(sum > x, y.signum() > 0);
                prop_assert_eq!(sum == x, y.is_zero());
            }
            prop_assert_eq!(x.cmp(&y), y.cmp(&x).reverse());
        }
    }
}
