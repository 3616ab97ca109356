//! `docker save` archives and OCI layouts in a tar: the archive index, manifest.json /
//! index.json / manifests / configs (JSON, digests, platforms), and the layers, through
//! the public `stage` that `launcher build` calls. Digests are not checked in fuzzing
//! builds (cfg(fuzzing)), so mutations reach every parser.
#![no_main]

use image_tools::oci::{stage, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = launcher_fuzz::image_file(data);
    for source in [
        Source::DockerArchive(path.clone()),
        Source::OciArchive(path.clone()),
    ] {
        let stage_dir = launcher_fuzz::scratch().join("stage").join("x");
        if let Ok(staged) = stage(&source, "amd64", &stage_dir) {
            let _ = (staged.config.cmd, staged.overrides.len());
        }
        launcher_fuzz::check_contained(&stage_dir);
    }
});
