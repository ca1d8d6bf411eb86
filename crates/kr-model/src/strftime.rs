//! `strftime_now(format)` for chat templates: transformers gives templates this function
//! (Llama 3.x's uses `strftime_now("%d %b %Y")` for "Today Date"). It formats the current UTC
//! time with Python's strftime directives; kr-serve has no date crate, so the few directives
//! templates use are implemented here over the civil calendar.
//!
//! Invariant: an unknown directive is an error naming it, never a silent wrong date.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The date `(year, month 1..=12, day 1..=31)` of `days` since 1970-01-01 (Howard Hinnant's
/// days-to-civil).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `format` with Python's directives filled from `secs` seconds since the Unix epoch (UTC).
pub fn format_utc(format: &str, secs: i64) -> Result<String, String> {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (year, month, day) = civil(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('Y') => year.to_string(),
            Some('y') => format!("{:02}", year.rem_euclid(100)),
            Some('m') => format!("{month:02}"),
            Some('d') => format!("{day:02}"),
            Some('-') if chars.as_str().starts_with('d') => {
                chars.next();
                day.to_string()
            }
            Some('B') => MONTHS[month as usize - 1].to_string(),
            Some('b') => MONTHS[month as usize - 1][..3].to_string(),
            Some('A') => DAYS[weekday].to_string(),
            Some('a') => DAYS[weekday][..3].to_string(),
            Some('H') => format!("{:02}", tod / 3600),
            Some('M') => format!("{:02}", tod / 60 % 60),
            Some('S') => format!("{:02}", tod % 60),
            Some('%') => "%".to_string(),
            Some(other) => {
                return Err(format!("strftime_now: directive %{other} is not supported"))
            }
            None => return Err("strftime_now: the format ends with a lone %".into()),
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// The template function: the current UTC time in `format`.
pub fn strftime_now(format: String) -> Result<String, minijinja::Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_utc(&format, secs)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python() {
        // 2024-07-26 13:05:09 UTC, a Friday (Python: datetime(2024, 7, 26, 13, 5, 9)).
        let t = 1_721_999_109;
        assert_eq!(format_utc("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(
            format_utc("%A, %B %-d, %y %H:%M:%S %%", t).unwrap(),
            "Friday, July 26, 24 13:05:09 %"
        );
        assert_eq!(format_utc("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert_eq!(format_utc("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
        assert!(format_utc("%Q", t).unwrap_err().contains("%Q"));
    }
}
