//! The config file's one duration grammar: Go's `time.ParseDuration`, as Istio and Kubernetes
//! write durations (`10s`, `1m`, `100ms`, `1h30m`, `1.5s`). Every duration in the file, the
//! DestinationRules and the TrafficPolicy custom resource reads and writes through here.

use std::time::Duration;

use serde::{Deserializer, Serializer};

use super::model::parse_text;

/// The grammar of [`parse`] as a JSON-schema pattern (the custom resource's schema).
pub const PATTERN: &str = r"^(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

/// Parses a duration as Go's `time.ParseDuration` does: a sequence of decimal numbers, each
/// with an optional fraction and a unit, e.g. `10s`, `1m`, `100ms`, `1h30m`, `1.5s`. Units:
/// `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A bare `0` is zero; negative durations are refused.
pub fn parse(text: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let expected = "expected a duration like 10s, 1m, 100ms or 1h30m";
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    if rest.is_empty() {
        return Err(expected.to_string());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(expected.to_string());
        }
        // Longest unit first, so "ms" is not read as "m".
        let Some((unit, size)) = UNITS
            .iter()
            .filter(|(unit, _)| after.starts_with(unit))
            .max_by_key(|(unit, _)| unit.len())
        else {
            return Err(format!("{expected} (missing or unknown unit)"));
        };
        let too_long = || "is too long".to_string();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part = whole.checked_mul(*size).ok_or_else(too_long)?;
        // Digits beyond nanosecond precision are dropped, as Go does.
        let mut scale = *size;
        for digit in fraction.bytes().take(30) {
            scale /= 10;
            part = part
                .checked_add(u128::from(digit - b'0') * scale)
                .ok_or_else(too_long)?;
        }
        nanos = nanos.checked_add(part).ok_or_else(too_long)?;
        rest = &after[unit.len()..];
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| "is too long".to_string())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration so that [`parse`] reads it back exactly: the largest unit that divides
/// it, e.g. `1m`, `90s`, `1500ms`.
pub fn format(duration: Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .expect("every duration is a whole number of nanoseconds");
    format!("{}{unit}", nanos / size)
}

/// `#[serde(with = "duration")]`.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    parse_text(deserializer, parse)
}

/// `#[serde(with = "duration")]`.
pub(super) fn serialize<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// `#[serde(with = "duration::optional")]`: absent or null is `None`.
pub(super) mod optional {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<Text>::deserialize(deserializer).map(|text| text.map(|Text(d)| d))
    }

    pub(in super::super) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => super::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    struct Text(Duration);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            super::deserialize(deserializer).map(Text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_agrees_with_the_parser() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        for text in [
            "0", "10s", "1m", "100ms", "1h30m", "1.5s", "2.s", ".5s", "3us", "4µs", "5ns",
        ] {
            assert!(parse(text).is_ok(), "{text}");
            assert!(pattern.is_match(text), "{text}");
        }
        for text in [
            "", "1", "s", "-1s", "1 s", "1sec", "1d", ".s", "1..5s", "1h 30m",
        ] {
            assert!(parse(text).is_err(), "{text}");
            assert!(!pattern.is_match(text), "{text}");
        }
    }

    #[test]
    fn parses_istio_durations() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s", Duration::from_secs(1)),
            ("100ms", Duration::from_millis(100)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("2m3s4ms", Duration::from_millis(123_004)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
            assert_eq!(parse(&format(expected)), Ok(expected), "{text} round trip");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        let cases = [
            ("", "expected a duration"),
            ("10", "missing or unknown unit"),
            ("1 s", "missing or unknown unit"),
            ("1d", "missing or unknown unit"),
            ("s", "expected a duration"),
            ("1.2.3s", "expected a duration"),
            ("-1s", "must not be negative"),
            ("99999999999999999999999h", "is too long"),
            ("94522879700260684295381835.9h", "is too long"),
        ];
        for (text, contained) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(contained), "{text}: {error:?}");
        }
    }

    #[test]
    fn formats_durations_with_the_largest_exact_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_nanos(1), "1ns"),
        ];
        for (duration, expected) in cases {
            assert_eq!(format(duration), expected);
        }
    }
}
