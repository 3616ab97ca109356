//! Every real fixture parses and matches tests/data/sif/README.md.

mod sif_common;

use image_tools::sif::{
    is_sif, CryptoFormat, DataType, Descriptor, Error, Extra, FsType, HashType, Link, MessageType,
    PartType, SbomFormat, SifFile, UNSET_TIME,
};
use sif_common::*;

const OLD_SCRIPT: &str = "#!/usr/bin/env run-singularity\n";
const PGP_FP: &str = "12045c8c0b1004d058de4beda20c27ee7ff7ba84";

/// Checks layout fields of one object: type, group, link, offset, size, padding.
#[allow(clippy::too_many_arguments)]
fn check(
    d: &Descriptor,
    ty: DataType,
    group: Option<u32>,
    link: Link,
    offset: u64,
    size: u64,
    pad: u64,
) {
    let got = (
        d.data_type,
        d.group_id,
        d.link,
        d.offset,
        d.size,
        d.size_with_padding,
    );
    assert_eq!(got, (ty, group, link, offset, size, pad), "object {}", d.id);
}

fn part(fs: FsType, part: PartType, arch: &str) -> Extra {
    Extra::Partition {
        fs,
        part,
        arch: arch.into(),
    }
}

fn sig(hash: HashType, fp: Option<&str>) -> Extra {
    Extra::Signature {
        hash,
        fingerprint: fp.map(String::from),
    }
}

/// Header defaults of the deterministic v2 images.
fn check_v2_header(sif: &SifFile, file_size: u64, used: i64, arch: &str) {
    let h = &sif.header;
    assert_eq!(sif.file_size(), file_size);
    assert_eq!(
        (h.magic.as_str(), h.version.as_str(), h.arch.as_str()),
        ("SIF_MAGIC", "01", arch)
    );
    assert_eq!((h.descriptors_total, h.descriptors_free), (48, 48 - used));
    assert_eq!(
        (h.descriptors_offset, h.descriptors_size, h.data_offset),
        (4096, 28080, 32176)
    );
    assert_eq!(sif.descriptors.len() as i64, used);
    assert!(sif.warnings().is_empty(), "{:?}", sif.warnings());
}

fn check_deterministic(sif: &SifFile) {
    assert_eq!(sif.header.uuid, [0; 16]);
    assert_eq!(
        (sif.header.created, sif.header.modified),
        (UNSET_TIME, UNSET_TIME)
    );
    for d in &sif.descriptors {
        assert_eq!(
            (d.created, d.modified, d.uid, d.gid),
            (UNSET_TIME, UNSET_TIME, 0, 0)
        );
        assert_eq!(d.name, "");
    }
}

#[test]
fn empty_images() {
    for name in ["empty.sif", "empty-id.sif", "empty-launch-script.sif"] {
        let (sif, _) = open(name);
        check_v2_header(&sif, 32176, 0, "unknown");
        assert_eq!(sif.header.data_size, 0);
        assert!(sif.primary_partition().is_none());
    }
    let (sif, _) = open("empty.sif");
    check_deterministic(&sif);
    assert_eq!(sif.header.launch_script, "");
    let (sif, _) = open("empty-id.sif");
    assert_eq!(
        sif.header.uuid.to_vec(),
        unhex("3fa802cc358b45e3bcc069dc7a45f9f8")
    );
    let (sif, _) = open("empty-launch-script.sif");
    assert_eq!(sif.header.launch_script, "#!/usr/bin/env run-script\n");
}

#[test]
fn one_object_generic_json_and_time() {
    for (name, time) in [
        ("one-object-generic-json.sif", UNSET_TIME),
        ("one-object-time.sif", 1593475316),
    ] {
        let (sif, f) = open(name);
        check_v2_header(&sif, 32178, 1, "unknown");
        assert_eq!((sif.header.created, sif.header.modified), (time, time));
        let d = obj(&sif, 1);
        check(d, DataType::GenericJson, Some(1), Link::None, 32176, 2, 2);
        assert_eq!(
            (d.name.as_str(), &d.extra, d.created, d.modified),
            ("data.json", &Extra::None, time, time)
        );
        assert_eq!(sif.read_object(&f, d).unwrap(), b"{}");
    }
}

#[test]
fn one_object_crypt_message_and_sbom() {
    let (sif, f) = open("one-object-crypt-message.sif");
    check_v2_header(&sif, 32180, 1, "unknown");
    check_deterministic(&sif);
    let d = obj(&sif, 1);
    check(d, DataType::CryptoMessage, Some(1), Link::None, 32176, 4, 4);
    let want = Extra::CryptoMessage {
        format: CryptoFormat::OpenPgp,
        message: MessageType::ClearSignature,
    };
    assert_eq!(d.extra, want);
    assert_eq!(sif.read_object(&f, d).unwrap(), [0xfe, 0xfe, 0xf0, 0xf0]);

    let (sif, f) = open("one-object-sbom.sif");
    check_v2_header(&sif, 32630, 1, "unknown");
    let d = obj(&sif, 1);
    check(d, DataType::Sbom, Some(1), Link::None, 32176, 454, 454);
    assert_eq!(
        d.extra,
        Extra::Sbom {
            format: SbomFormat::CycloneDxJson
        }
    );
    let json: serde_json::Value = serde_json::from_slice(&sif.read_object(&f, d).unwrap()).unwrap();
    assert_eq!(json["bomFormat"], "CycloneDX");
}

#[test]
fn one_object_oci() {
    for (name, ty, size, prefix, suffix) in [
        (
            "one-object-oci-root-index.sif",
            DataType::OciRootIndex,
            706,
            "sha256:2dc692f0",
            "4cffb",
        ),
        (
            "one-object-oci-blob.sif",
            DataType::OciBlob,
            847,
            "sha256:a88b15e9",
            "00c731",
        ),
    ] {
        let (sif, f) = open(name);
        check_v2_header(&sif, 32176 + size, 1, "unknown");
        check_deterministic(&sif);
        let d = obj(&sif, 1);
        check(d, ty, Some(1), Link::None, 32176, size, size);
        let Extra::OciDigest(digest) = &d.extra else {
            panic!("{name}: {:?}", d.extra)
        };
        assert!(
            digest.starts_with(prefix) && digest.ends_with(suffix),
            "{digest}"
        );
        let data = sif.read_object(&f, d).unwrap();
        assert_eq!(*digest, format!("sha256:{}", sha256_hex(&data)));
    }
}

/// Objects #1 and #2 shared by the deterministic one-group* images.
fn check_one_group_objects(sif: &SifFile, f: &std::fs::File) {
    let d1 = obj(sif, 1);
    check(d1, DataType::Partition, Some(1), Link::None, 32768, 4, 596);
    assert_eq!(d1.extra, part(FsType::Raw, PartType::System, "386"));
    assert_eq!(sif.read_object(f, d1).unwrap(), [0xfa, 0xce, 0xfe, 0xed]);
    let d2 = obj(sif, 2);
    check(
        d2,
        DataType::Partition,
        Some(1),
        Link::None,
        36864,
        4096,
        8188,
    );
    assert_eq!(d2.extra, part(FsType::Squash, PartType::PrimSys, "386"));
    assert_eq!(sif.primary_squashfs().unwrap().id, 2);
    assert_eq!(&sif.read_object(f, d2).unwrap()[..4], b"hsqs");
}

#[test]
fn one_group() {
    let (sif, f) = open("one-group.sif");
    check_v2_header(&sif, 40960, 2, "386");
    check_deterministic(&sif);
    assert_eq!(sif.header.data_size, 40960 - 32176);
    check_one_group_objects(&sif, &f);
}

#[test]
fn one_group_signed() {
    for (name, size, fp) in [
        ("one-group-signed-dsse.sif", 1694, None),
        ("one-group-signed-pgp.sif", 1048, Some(PGP_FP)),
    ] {
        let (sif, f) = open(name);
        check_v2_header(&sif, 40960 + size, 3, "386");
        check_deterministic(&sif);
        check_one_group_objects(&sif, &f);
        let d = obj(&sif, 3);
        check(
            d,
            DataType::Signature,
            None,
            Link::Group(1),
            40960,
            size,
            size,
        );
        assert_eq!(d.extra, sig(HashType::Sha256, fp));
        let payload = sif.read_object(&f, d).unwrap();
        if fp.is_none() {
            assert!(String::from_utf8_lossy(&payload)
                .contains("application/vnd.sylabs.sif-metadata+json"));
        } else {
            assert!(payload.starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----"));
        }
    }
}

#[test]
fn two_groups_signed_dsse() {
    let (sif, f) = open("two-groups-signed-dsse.sif");
    check_v2_header(&sif, 306224, 5, "386");
    check_deterministic(&sif);
    check_one_group_objects(&sif, &f);
    let d3 = obj(&sif, 3);
    check(
        d3,
        DataType::Partition,
        Some(2),
        Link::None,
        40960,
        262144,
        262144,
    );
    assert_eq!(d3.extra, part(FsType::Ext3, PartType::System, "amd64"));
    check(
        obj(&sif, 4),
        DataType::Signature,
        None,
        Link::Group(1),
        303104,
        1694,
        1694,
    );
    check(
        obj(&sif, 5),
        DataType::Signature,
        None,
        Link::Group(2),
        304798,
        1426,
        1426,
    );
    for id in [4, 5] {
        assert_eq!(obj(&sif, id).extra, sig(HashType::Sha256, None));
    }
}

/// Header and partition layout of the images made by the old (v1) writer.
fn check_old_writer(sif: &SifFile, file_size: u64, used: i64, uuid: &str) {
    let h = &sif.header;
    assert_eq!(sif.file_size(), file_size);
    assert_eq!(
        (h.launch_script.as_str(), h.arch.as_str(), h.data_offset),
        (OLD_SCRIPT, "386", 32768)
    );
    assert_eq!((h.descriptors_total, h.descriptors_free), (48, 48 - used));
    assert_eq!(h.uuid.to_vec(), unhex(uuid));
    assert_eq!(h.created, 1590175859);
    let d1 = obj(sif, 1);
    check(d1, DataType::Partition, Some(1), Link::None, 32768, 4, 4);
    assert_eq!(d1.extra, part(FsType::Raw, PartType::System, "386"));
    let d2 = obj(sif, 2);
    check(d2, DataType::Partition, Some(1), Link::None, 36864, 4, 4096);
    assert_eq!(d2.extra, part(FsType::Squash, PartType::PrimSys, "386"));
    for d in &sif.descriptors {
        assert_eq!((d.uid, d.gid), (1000, 1000));
        let name = if d.data_type == DataType::Signature {
            "part-signature"
        } else {
            "."
        };
        assert_eq!(d.name, name);
        if let Extra::Signature { .. } = d.extra {
            assert_eq!(d.extra, sig(HashType::Sha384, Some(PGP_FP)));
        }
    }
}

#[test]
fn legacy_signed_images() {
    const UUID: &str = "6ecc76b7a4974f7f9ebd8da2a04c6be1";
    let (sif, f) = open("one-group-signed-legacy.sif");
    check_old_writer(&sif, 41569, 3, UUID);
    check(
        obj(&sif, 3),
        DataType::Signature,
        Some(1),
        Link::Object(2),
        40960,
        609,
        4701,
    );
    let payload = sif.read_object(&f, obj(&sif, 3)).unwrap();
    assert!(String::from_utf8_lossy(&payload).contains("SIFHASH:\n"));

    let (sif, _) = open("one-group-signed-legacy-group.sif");
    check_old_writer(&sif, 41569, 3, UUID);
    check(
        obj(&sif, 3),
        DataType::Signature,
        None,
        Link::Group(1),
        40960,
        609,
        4701,
    );

    let (sif, _) = open("one-group-signed-legacy-all.sif");
    check_old_writer(&sif, 45665, 4, UUID);
    check(
        obj(&sif, 3),
        DataType::Signature,
        Some(1),
        Link::Object(1),
        40960,
        609,
        4701,
    );
    check(
        obj(&sif, 4),
        DataType::Signature,
        Some(1),
        Link::Object(2),
        45056,
        609,
        4096,
    );

    let (sif, f) = open("two-groups-signed-legacy-all.sif");
    check_old_writer(&sif, 49761, 5, "0b19ec2c0b0846c995aefa88cd9e48a1");
    let d3 = obj(&sif, 3);
    check(d3, DataType::Partition, Some(2), Link::None, 40960, 4, 4096);
    assert_eq!(d3.extra, part(FsType::Ext3, PartType::System, "amd64"));
    check(
        obj(&sif, 4),
        DataType::Signature,
        Some(1),
        Link::Object(1),
        45056,
        609,
        4701,
    );
    check(
        obj(&sif, 5),
        DataType::Signature,
        Some(1),
        Link::Object(2),
        49152,
        609,
        4096,
    );
    let dummies: Vec<Vec<u8>> = (1..=3)
        .map(|id| sif.read_object(&f, obj(&sif, id)).unwrap())
        .collect();
    assert_eq!(
        dummies,
        [unhex("facefeed"), unhex("deadbeef"), unhex("baddcafe")]
    );
}

#[test]
fn edge_cases() {
    let (sif, _) = open("edge-zero-capacity.sif");
    let h = &sif.header;
    assert_eq!(
        (sif.file_size(), h.descriptors_total, h.descriptors_free),
        (4096, 0, 0)
    );
    assert_eq!((h.descriptors_size, h.data_offset), (0, 4096));
    assert!(sif.descriptors.is_empty());

    let (sif, _) = open("edge-capacity-one.sif");
    let h = &sif.header;
    assert_eq!(
        (sif.file_size(), h.descriptors_total, h.descriptors_free),
        (4681, 1, 1)
    );
    assert_eq!((h.descriptors_size, h.data_offset), (585, 4681));
    assert!(sif.descriptors.is_empty());

    // Slot 0 is a hole; the only object has ID 2 and sits after zeroed bytes.
    let (sif, f) = open("edge-descriptor-hole.sif");
    check_v2_header(&sif, 32180, 1, "unknown");
    assert_eq!(sif.header.data_size, 4);
    assert!(sif.descriptor(1).is_none());
    check(
        obj(&sif, 2),
        DataType::Generic,
        Some(1),
        Link::None,
        32178,
        2,
        2,
    );
    assert_eq!(sif.read_object(&f, obj(&sif, 2)).unwrap(), [0xfe, 0xed]);

    // All slots free, but the header still counts the orphaned data.
    let (sif, _) = open("edge-deleted-primary-no-compact.sif");
    check_v2_header(&sif, 32770, 0, "unknown");
    assert_eq!(sif.header.data_size, 594);

    let (sif, _) = open("edge-setprim-moved.sif");
    check_v2_header(&sif, 36866, 2, "amd64");
    check(
        obj(&sif, 1),
        DataType::Partition,
        Some(1),
        Link::None,
        32768,
        2,
        594,
    );
    assert_eq!(
        obj(&sif, 1).extra,
        part(FsType::Raw, PartType::System, "386")
    );
    check(
        obj(&sif, 2),
        DataType::Partition,
        Some(1),
        Link::None,
        36864,
        2,
        4096,
    );
    assert_eq!(
        obj(&sif, 2).extra,
        part(FsType::Raw, PartType::PrimSys, "amd64")
    );
    assert_eq!(sif.primary_partition().unwrap().id, 2);
    let err = sif.primary_squashfs().unwrap_err();
    assert_eq!(
        err.to_string(),
        "SIF has no SquashFS primary partition (found Raw)"
    );

    let (sif, _) = open("edge-align-128.sif");
    check_v2_header(&sif, 32258, 2, "386");
    check(
        obj(&sif, 1),
        DataType::Generic,
        Some(1),
        Link::None,
        32176,
        2,
        2,
    );
    check(
        obj(&sif, 2),
        DataType::Partition,
        Some(1),
        Link::None,
        32256,
        2,
        80,
    );
    assert_eq!(
        obj(&sif, 2).extra,
        part(FsType::Squash, PartType::PrimSys, "386")
    );
}

#[test]
fn singularityce_busybox() {
    let (sif, f) = open("singularityce-busybox-amd64.sif");
    let h = &sif.header;
    assert_eq!(sif.file_size(), 792293);
    assert_eq!(
        (h.launch_script.as_str(), h.arch.as_str(), h.data_offset),
        (OLD_SCRIPT, "amd64", 32768)
    );
    assert_eq!(h.uuid.to_vec(), unhex("4f307b4c58a847539c0f21dceefed4a6"));
    assert_eq!((h.created, h.modified), (1627931376, 1627931376));
    let want = [
        (1, DataType::Deffile, 32768, 39, "."),
        (
            2,
            DataType::GenericJson,
            36864,
            1896,
            "inspect-metadata.json",
        ),
        (3, DataType::GenericJson, 40960, 90, "oci-config.json"),
        (4, DataType::Partition, 45056, 745472, "squashfs-275937245"),
    ];
    for (id, ty, off, size, name) in want {
        let d = obj(&sif, id);
        assert_eq!(
            (d.data_type, d.group_id, d.link, d.offset, d.size),
            (ty, Some(1), Link::None, off, size)
        );
        assert_eq!(d.name, name);
    }
    let deffile = sif.read_object(&f, obj(&sif, 1)).unwrap();
    let deffile = String::from_utf8(deffile).unwrap();
    assert!(
        deffile.contains("BootStrap: docker") && deffile.contains("From: busybox:1.33.1"),
        "{deffile}"
    );

    let root = sif.primary_squashfs().unwrap();
    assert_eq!((root.id, root.offset, root.size), (4, 45056, 745472));
    assert_eq!(root.extra, part(FsType::Squash, PartType::PrimSys, "amd64"));
    let mut magic = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, root.offset).unwrap();
    assert_eq!(&magic, b"hsqs");

    let s = obj(&sif, 5);
    check(
        s,
        DataType::Signature,
        None,
        Link::Group(1),
        790528,
        1765,
        1765,
    );
    assert_eq!(
        s.extra,
        sig(
            HashType::Sha256,
            Some("1137e72e6816bfc06d9caa0d15f3f4f4f14b03b2")
        )
    );
    assert_eq!((s.uid, s.gid, s.name.as_str()), (1000, 1001, "."));
}

#[test]
fn singularityce_empty_oci() {
    let (sif, f) = open("singularityce-empty-oci.sif");
    assert_eq!(sif.file_size(), 32179);
    assert_eq!(&sif.header.uuid[..4], &unhex("5971df2a")[..]);
    assert_eq!(
        (sif.header.created, sif.header.data_offset),
        (1689330683, 32176)
    );
    let d = obj(&sif, 1);
    check(d, DataType::OciRootIndex, Some(1), Link::None, 32176, 3, 3);
    assert_eq!(sif.read_object(&f, d).unwrap(), b"{}\n");
    let Extra::OciDigest(digest) = &d.extra else {
        panic!("{:?}", d.extra)
    };
    assert!(digest.starts_with("sha256:ca3d163b") && digest.ends_with("2356"));
    assert_eq!(*digest, format!("sha256:{}", sha256_hex(b"{}\n")));
}

#[test]
fn every_fixture_opens_via_read_from() {
    let mut n = 0;
    for entry in std::fs::read_dir(testdata()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sif") {
            let file = std::fs::File::open(&path).unwrap();
            let sif =
                SifFile::read_from(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                sif.warnings().is_empty(),
                "{}: {:?}",
                path.display(),
                sif.warnings()
            );
            let mut head = [0u8; 64];
            std::io::Read::read_exact(&mut &file, &mut head).unwrap();
            assert!(is_sif(&head));
            n += 1;
        }
    }
    assert_eq!(n, 25, "fixture count changed");
}

#[test]
fn object_reader_streams_bounded() {
    use std::io::{Read, Seek, SeekFrom};
    let (sif, f) = open("one-group.sif");
    let d = obj(&sif, 2);
    let mut r = sif.object_reader(&f, d).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, sif.read_object(&f, d).unwrap());
    r.seek(SeekFrom::End(-2)).unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail.len(), 2);
    assert!(r.seek(SeekFrom::Current(-10_000)).is_err());
}

#[test]
fn primary_squashfs_errors() {
    let (sif, _) = open("empty.sif");
    assert_eq!(
        sif.primary_squashfs().unwrap_err().to_string(),
        "SIF has no primary partition"
    );
    assert!(matches!(sif.primary_squashfs(), Err(Error::NotFound(_))));
}

#[test]
fn is_sif_detection() {
    let head = fixture_bytes("one-group.sif");
    assert!(is_sif(&head[..42]));
    assert!(!is_sif(&head[..41]));
    assert!(!is_sif(b""));
    assert!(!is_sif(&[0u8; 128]));
    let mut v2 = head[..128].to_vec();
    v2[42..44].copy_from_slice(b"02");
    assert!(
        is_sif(&v2),
        "unsupported versions are still SIF, rejected later with a clear error"
    );
}
