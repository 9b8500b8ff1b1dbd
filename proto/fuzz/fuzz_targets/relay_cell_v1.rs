#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzzing::relay_cell_v1(data));
