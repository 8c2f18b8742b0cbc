//! Calendar arithmetic without a date library: proleptic Gregorian civil
//! date -> days since 1970-01-01 (Howard Hinnant's `days_from_civil`).

/// `true` for Gregorian leap years.
pub(crate) fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1-12) of `year`; 0 for an invalid month.
pub(crate) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a (valid) civil date.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Local wall-clock time -> UTC unix seconds, given the local offset from UTC
/// in minutes (UTC+7 = 420). All fields must already be validated.
pub(crate) fn local_to_unix(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    utc_offset_minutes: i32,
) -> i64 {
    days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3_600
        + i64::from(minute) * 60
        + i64::from(second)
        - i64::from(utc_offset_minutes) * 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_day_zero() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn known_days() {
        // 2000-03-01: 30 years * 365 + 7 leap days (72..96) + Jan(31) + Feb(29) = 11017
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2020-12-31 = 18627 (2021-01-01 is 18628 = 51 * 365 + 13 leap days)
        assert_eq!(days_from_civil(2021, 1, 1), 18_628);
        assert_eq!(days_from_civil(2020, 12, 31), 18_627);
        assert_eq!(days_from_civil(2024, 2, 29) + 1, days_from_civil(2024, 3, 1));
    }

    #[test]
    fn days_from_civil_is_consecutive_over_four_centuries() {
        let mut expected = days_from_civil(1900, 1, 1);
        for year in 1900..2300 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), expected, "{year}-{month}-{day}");
                    expected += 1;
                }
            }
        }
    }

    #[test]
    fn leap_rules() {
        assert!(is_leap(2000));
        assert!(!is_leap(1900));
        assert!(is_leap(2024));
        assert!(!is_leap(2023));
        assert_eq!(days_in_month(2021, 2), 28);
        assert_eq!(days_in_month(2020, 2), 29);
        assert_eq!(days_in_month(2020, 13), 0);
    }

    #[test]
    fn offset_is_subtracted() {
        // 2020-12-31 21:41:00 at UTC+7 is 14:41:00 UTC.
        let utc = local_to_unix(2020, 12, 31, 21, 41, 0, 420);
        assert_eq!(utc, 18_627 * 86_400 + 14 * 3_600 + 41 * 60);
        // Negative offsets (UTC-5): 21:41 local is 02:41 the next day.
        let utc = local_to_unix(2020, 12, 31, 21, 41, 0, -300);
        assert_eq!(utc, 18_628 * 86_400 + 2 * 3_600 + 41 * 60);
    }
}
