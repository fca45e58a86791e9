//! ISO-4217 currency code check for the `currency` fields.

/// The active ISO-4217 alphabetic codes (List One, as published 2026-01-01), sorted
/// for binary search. Includes fund, precious-metal and special codes (`XAU`,
/// `XDR`, `XTS`, `XXX`, ...), because they are part of the list.
const ISO_4217_CODES: [&str; 178] = [
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BHD",
    "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR",
    "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR",
    "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN",
    "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH",
    "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAD",
    "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF",
    "XPT", "XSU", "XTS", "XUA", "XXX", "YER", "ZAR", "ZMW", "ZWG",
];

/// Whether `code` is an active ISO-4217 alphabetic code (exact, uppercase).
pub(crate) fn is_iso_4217(code: &str) -> bool {
    ISO_4217_CODES.binary_search(&code).is_ok()
}

/// garde rule for a `currency` field: three uppercase ASCII letters that form
/// an active ISO-4217 code.
pub(crate) fn iso_4217(value: &str, _ctx: &()) -> garde::Result {
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(garde::Error::new(
            "must be three uppercase letters (iso-4217, e.g. `EUR`)",
        ));
    }
    if !is_iso_4217(value) {
        return Err(garde::Error::new(format!(
            "`{value}` is not an active iso-4217 currency code"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_unique_and_well_formed() {
        assert!(
            ISO_4217_CODES.windows(2).all(|w| w[0] < w[1]),
            "the list must be strictly sorted for binary search"
        );
        for code in ISO_4217_CODES {
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()),
                "{code:?}"
            );
        }
    }

    #[test]
    fn known_and_unknown_codes() {
        for code in [
            "EUR", "USD", "GBP", "CHF", "JPY", "AED", "ZWG", "XCG", "SLE",
        ] {
            assert!(is_iso_4217(code), "{code} should be known");
            assert!(iso_4217(code, &()).is_ok(), "{code} should pass the rule");
        }
        // Withdrawn, made up, or malformed.
        for code in [
            "ANG", "HRK", "DEM", "ABC", "eur", "Eur", "EURO", "EU", "", "E1R", "ÉUR",
        ] {
            assert!(!is_iso_4217(code), "{code:?} should be unknown");
            assert!(
                iso_4217(code, &()).is_err(),
                "{code:?} should fail the rule"
            );
        }
    }

    #[test]
    fn messages_are_lowercase_words() {
        let malformed = iso_4217("eur", &()).unwrap_err();
        assert!(
            malformed
                .message()
                .starts_with("must be three uppercase letters")
        );
        let unknown = iso_4217("ABC", &()).unwrap_err();
        assert_eq!(
            unknown.message().to_string(),
            "`ABC` is not an active iso-4217 currency code"
        );
    }
}
