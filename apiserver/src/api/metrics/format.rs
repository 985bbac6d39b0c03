//! How the metrics API writes its numbers, exactly as the Go types marshal:
//! `resource.Quantity` in canonical form (CPU as a `DecimalSI` quantity of
//! nanocores, memory as a `BinarySI` quantity of bytes, as metrics-server's
//! `uint64Quantity` builds them) and `metav1.Duration` (Go's
//! `time.Duration.String`).
//!
//! berth-api's `quantity` parses and compares but has no canonical writer;
//! these two cases are all the metrics API needs, so they live here.

use std::time::Duration;

/// The decimal SI suffixes by exponent (a multiple of 3).
fn decimal_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

/// `mantissa × 10^exponent` as apimachinery's `CanonicalizeBytes` writes a
/// `DecimalSI` quantity: every factor of ten moved into the exponent, the
/// exponent then lowered to a multiple of three (`int64Amount.AsCanonicalBytes`),
/// and the SI suffix of that exponent.
fn decimal_si(mantissa: u64, exponent: i32) -> String {
    if mantissa == 0 {
        return "0".to_string();
    }
    let (mut m, mut e) = (u128::from(mantissa), exponent);
    while m % 10 == 0 {
        m /= 10;
        e = e.saturating_add(1);
    }
    // Lower the exponent to the multiple of three at or below it.
    let down = e.rem_euclid(3);
    m = m.saturating_mul(10u128.pow(down.unsigned_abs()));
    e = e.saturating_sub(down);
    match decimal_suffix(e) {
        Some(suffix) => format!("{m}{suffix}"),
        // Beyond exa (never from a u64 of nano-units): the exponent form.
        None => format!("{m}e{e}"),
    }
}

/// A CPU usage in nanocores as metrics-server returns it:
/// `uint64Quantity(nanocores, DecimalSI, -9)` (`123456789n`, `200m`, `1`).
/// A value beyond `i64::MAX` keeps one digit less, as upstream does.
pub fn cpu_quantity(nanocores: u64) -> String {
    match i64::try_from(nanocores) {
        Ok(_) => decimal_si(nanocores, -9),
        Err(_) => decimal_si(nanocores / 10, -8),
    }
}

/// A memory size in bytes as metrics-server returns it:
/// `uint64Quantity(bytes, BinarySI, 0)`: below 1024, or not a whole number
/// of KiB, the plain number; otherwise the largest binary suffix that keeps
/// it whole (`12345Ki`, `64Mi`).
pub fn memory_quantity(bytes: u64) -> String {
    // Beyond i64::MAX upstream keeps one digit less and then cannot stay
    // binary (10 is no power of two): DecimalSI of bytes/10 × 10^1.
    if i64::try_from(bytes).is_err() {
        return decimal_si(bytes / 10, 1);
    }
    if bytes < 1024 {
        return decimal_si(bytes, 0);
    }
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let (mut amount, mut power) = (bytes, 0usize);
    while amount % 1024 == 0 && power + 1 < SUFFIXES.len() {
        amount /= 1024;
        power += 1;
    }
    format!("{amount}{}", SUFFIXES.get(power).unwrap_or(&""))
}

/// The sum of quantities as the Table's cells show a pod's usage.
pub fn sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0u64, u64::saturating_add)
}

/// Go's `time.Duration.String()` for a non-negative duration, which is how
/// `metav1.Duration` marshals: `0s`, `1.5ms`, `15s`, `10.123s`, `1m0s`,
/// `1h2m3.5s`.
pub fn go_duration(d: Duration) -> String {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        // Below a second: the largest unit under it, with a fraction.
        let (unit, digits, suffix) = if nanos < 1_000 {
            (1, 0, "ns")
        } else if nanos < 1_000_000 {
            (1_000, 3, "µs")
        } else {
            (1_000_000, 6, "ms")
        };
        return format!("{}{}{suffix}", nanos / unit, fraction(nanos % unit, digits));
    }
    let seconds = nanos / 1_000_000_000;
    let frac = fraction(nanos % 1_000_000_000, 9);
    let (h, m, s) = (seconds / 3600, (seconds / 60) % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}{frac}s")
    } else if seconds >= 60 {
        format!("{m}m{s}{frac}s")
    } else {
        format!("{s}{frac}s")
    }
}

/// `.ddd` of `value` with `digits` digits, trailing zeros (and the point
/// itself for zero) left out, as Go's `fmtFrac`.
fn fraction(value: u64, digits: usize) -> String {
    if value == 0 || digits == 0 {
        return String::new();
    }
    let text = format!("{value:0digits$}");
    format!(".{}", text.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_are_canonical_decimal_si() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(123_456_789), "123456789n");
        assert_eq!(cpu_quantity(200_000_000), "200m");
        assert_eq!(cpu_quantity(1_000_000_000), "1");
        assert_eq!(cpu_quantity(2_500_000_000), "2500m");
        assert_eq!(cpu_quantity(123_456_000), "123456u");
        assert_eq!(cpu_quantity(1_500), "1500n");
        assert_eq!(cpu_quantity(10), "10n");
        assert_eq!(cpu_quantity(64_000_000_000), "64");
        // Past i64::MAX: one digit dropped, as upstream.
        assert_eq!(cpu_quantity(u64::MAX), "18446744073709551610n");
    }

    #[test]
    fn memory_quantities_are_canonical_binary_si() {
        assert_eq!(memory_quantity(0), "0");
        assert_eq!(memory_quantity(512), "512");
        assert_eq!(memory_quantity(1000), "1k");
        assert_eq!(memory_quantity(1024), "1Ki");
        assert_eq!(memory_quantity(12_345 * 1024), "12345Ki");
        assert_eq!(memory_quantity(64 << 20), "64Mi");
        assert_eq!(memory_quantity(1025), "1025");
        assert_eq!(memory_quantity(3 << 30), "3Gi");
        assert_eq!(memory_quantity(1 << 62), "4Ei");
        assert_eq!(memory_quantity(u64::MAX), "18446744073709551610");
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(15_000)), "15s");
        assert_eq!(go_duration(ms(10_123)), "10.123s");
        assert_eq!(go_duration(ms(2_001)), "2.001s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(3_723_500)), "1h2m3.5s");
        assert_eq!(go_duration(ms(1)), "1ms");
        assert_eq!(go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(
            go_duration(Duration::from_nanos(1_000_000_001)),
            "1.000000001s"
        );
    }
}
