//! One layer tar (plain, gzip or zstd) applied into an empty staging root: paths,
//! whiteouts, opaque directories, hard links, symlinks, modes. Nothing may be
//! written outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let stage_dir = launcher_fuzz::scratch().join("stage").join("x");
    let root = stage_dir.join("rootfs");
    if std::fs::create_dir_all(&root).is_err() {
        std::process::abort();
    }
    let _ = image_tools::oci::fuzzing::apply_layer(data, &root);
    launcher_fuzz::check_contained(&stage_dir);
});
