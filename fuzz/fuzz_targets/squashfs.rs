//! SquashFS images: the launcher's own open (`Image::open`: format detection, superblock,
//! id/fragment/export/xattr tables), then every operation the FUSE server serves.
#![no_main]

use launcher_runtime::image::Image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = launcher_fuzz::image_file(data);
    if let Ok(img) = Image::open(&path) {
        launcher_fuzz::walk(&img.archive);
    }
});
