//! SIF files: the header and descriptor parser, every object read, then the launcher's
//! open (primary partition, OCI config) and a walk of the SquashFS partition.
#![no_main]

use image_tools::sif::SifFile;
use launcher_runtime::image::Image;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Seek, SeekFrom};

fuzz_target!(|data: &[u8]| {
    let path = launcher_fuzz::image_file(data);
    let Ok(file) = std::fs::File::open(&path) else {
        return;
    };
    if let Ok(sif) = SifFile::read_from(&file) {
        let _ = (sif.warnings(), sif.primary_partition(), sif.file_size());
        let _ = sif.primary_squashfs();
        for d in &sif.descriptors {
            let _ = sif.descriptor(d.id);
            let _ = sif.read_object(&file, d);
            if let Ok(mut r) = sif.object_reader(&file, d) {
                let mut buf = [0u8; 512];
                let _ = r.read(&mut buf);
                let _ = r.seek(SeekFrom::End(-3));
                let _ = r.read(&mut buf);
            }
        }
    }
    if let Ok(img) = Image::open(&path) {
        launcher_fuzz::walk(&img.archive);
    }
    // What `launcher inspect` shows of the same file.
    let _ = launcher_runtime::image::inspect::report(&path);
});
