//! Property tests of the config value types: what Display prints, parse reads back; garbage
//! never panics.

use dragonfly_common::config::{Duration, Port, Size};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn size_display_round_trips(bytes in any::<u64>()) {
        let size = Size::from_bytes(bytes);
        prop_assert_eq!(size.to_string().parse::<Size>(), Ok(size));
    }

    #[test]
    fn size_binary_multiples_display_with_binary_units(n in 1u64..1024, shift in prop::sample::select(vec![10u32, 20, 30, 40])) {
        let size = Size::from_bytes(n << shift);
        let text = size.to_string();
        prop_assert!(text.ends_with('i'), "{text}");
        prop_assert_eq!(text.parse::<Size>(), Ok(size));
    }

    #[test]
    fn size_garbage_never_panics(text in "\\PC{0,24}") {
        let _ = text.parse::<Size>();
    }

    #[test]
    fn size_near_miss_never_panics(text in "[0-9.]{0,24}[ kKmMgGtTpPeEiIbB.x]{0,4}") {
        if let Ok(size) = text.parse::<Size>() {
            // Whatever parsed must print and parse back to itself.
            prop_assert_eq!(size.to_string().parse::<Size>(), Ok(size));
        }
    }

    #[test]
    fn duration_display_round_trips(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let d = Duration::from(std::time::Duration::new(secs, nanos));
        prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
    }

    #[test]
    fn duration_whole_units_display_compactly(n in 1u64..100_000) {
        let d = Duration::from_secs(n);
        let text = d.to_string();
        prop_assert!(!text.contains(' '), "{text}");
        prop_assert_eq!(text.parse::<Duration>(), Ok(d));
    }

    #[test]
    fn duration_garbage_never_panics(text in "\\PC{0,24}") {
        let _ = text.parse::<Duration>();
    }

    #[test]
    fn duration_near_miss_never_panics(text in "[0-9.]{0,22}[ a-zµ.]{0,5}[0-9]{0,3}[a-z]{0,2}") {
        let _ = text.parse::<Duration>();
    }

    #[test]
    fn port_garbage_never_panics(text in "\\PC{0,12}") {
        if let Ok(port) = text.parse::<Port>() {
            prop_assert!(port.get() >= 1);
        }
    }

    #[test]
    fn yaml_scalars_never_panic(text in "\\PC{0,16}") {
        // Any scalar in any typed slot is either accepted or a clean error.
        let yaml = format!("s: {text:?}\nd: {text:?}\n");
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        #[allow(dead_code)]
        struct T { s: Size, d: Duration }
        let _ = dragonfly_common::config::load_yaml::<T>(&yaml, "p.yaml");
    }
}
