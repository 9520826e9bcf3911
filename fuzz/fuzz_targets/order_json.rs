#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowline_fuzz::order_json::check(data));
