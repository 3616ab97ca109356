//! `launcher inspect`: what an image holds, read in-process without mounting it.

use crate::image::view::ImageView;
use crate::image::Image;
use anyhow::Result;
use image_tools::sif::{DataType, Extra, Link};
use serde_json::{json, Value};
use std::path::Path;

/// Build the report as JSON (the text form is rendered from it, so both always agree).
pub fn report(path: &Path) -> Result<Value> {
    report_of(&Image::open(path)?)
}

fn report_of(image: &Image) -> Result<Value> {
    let sb = image.archive.superblock();
    let desc = image.desc();
    let mut r = json!({
        "path": desc.path.display().to_string(),
        "format": desc.format,
        "size": desc.file_size,
        "squashfs": {
            "offset": desc.squashfs_offset,
            "compressor": format!("{:?}", sb.compressor).to_lowercase(),
            "block_size": sb.block_size,
            "inodes": sb.inode_count,
            "bytes_used": sb.bytes_used,
            "fragments": sb.fragment_count,
            "created": sb.mkfs_time,
        },
    });
    if let Some(sif) = &image.sif {
        let h = &sif.header;
        let descriptors: Vec<Value> = sif
            .descriptors
            .iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "type": d.data_type.to_string(),
                    "group": d.group_id,
                    "link": match d.link { Link::None => Value::Null, Link::Object(n) => json!(format!("object {n}")), Link::Group(n) => json!(format!("group {n}")) },
                    "offset": d.offset,
                    "size": d.size,
                    "name": d.name,
                    "details": extra_text(&d.extra),
                })
            })
            .collect();
        r["sif"] = json!({
            "version": h.version,
            "arch": h.arch,
            "uuid": uuid_text(&h.uuid),
            "created": h.created,
            "launch_script": h.launch_script,
            "descriptors_used": sif.descriptors.len(),
            "descriptors_total": h.descriptors_total,
            "descriptors": descriptors,
        });
    }
    if let Some(text) = image.read_file("/.singularity.d/labels.json")? {
        r["labels"] =
            serde_json::from_slice(&text).unwrap_or_else(|_| json!(String::from_utf8_lossy(&text)));
    }
    if let Some(text) = image.read_file("/.singularity.d/runscript")? {
        r["runscript"] = json!(String::from_utf8_lossy(&text));
    }
    if let Some(oci) = image.oci_config() {
        r["oci_config"] = json!({
            "env": oci.env,
            "entrypoint": oci.entrypoint,
            "cmd": oci.cmd,
            "working_dir": oci.working_dir,
        });
    }
    Ok(r)
}

/// What `apptainer inspect` shows, by its flag names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Labels,
    Runscript,
    Deffile,
    Environment,
    Helpfile,
    Test,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Labels,
        Section::Deffile,
        Section::Runscript,
        Section::Test,
        Section::Environment,
        Section::Helpfile,
    ];

    /// The attribute name in Apptainer's JSON.
    fn key(self) -> &'static str {
        match self {
            Section::Labels => "labels",
            Section::Runscript => "runscript",
            Section::Deffile => "deffile",
            Section::Environment => "environment",
            Section::Helpfile => "helpfile",
            Section::Test => "test",
        }
    }
}

/// Apptainer's `data.attributes` for these sections: labels as an object, the others as text;
/// a section the image lacks is left out.
fn attributes(image: &Image, which: &[Section]) -> Result<serde_json::Map<String, Value>> {
    let text = |p: &str| -> Result<Option<String>> {
        Ok(image
            .read_file(p)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    let mut out = serde_json::Map::new();
    for &sec in which {
        let value = match sec {
            Section::Labels => text("/.singularity.d/labels.json")?
                .map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::String(t))),
            Section::Runscript => text("/.singularity.d/runscript")?.map(Value::String),
            Section::Helpfile => text("/.singularity.d/runscript.help")?.map(Value::String),
            Section::Test => text("/.singularity.d/test")?.map(Value::String),
            Section::Deffile => deffile(image)?.map(Value::String),
            Section::Environment => {
                let mut names = image.list_dir("/.singularity.d/env")?;
                names.sort();
                let mut all = String::new();
                for n in names.iter().filter(|n| n.ends_with(".sh")) {
                    if let Some(t) = text(&format!("/.singularity.d/env/{n}"))? {
                        all.push_str(&format!("=== /.singularity.d/env/{n} ===\n{t}"));
                        if !t.ends_with('\n') {
                            all.push('\n');
                        }
                    }
                }
                (!all.is_empty()).then_some(Value::String(all))
            }
        };
        if let Some(v) = value {
            out.insert(sec.key().to_string(), v);
        }
    }
    Ok(out)
}

/// The definition file the image was built from: the SIF's Deffile object, else the copy
/// Apptainer keeps in the image.
fn deffile(image: &Image) -> Result<Option<String>> {
    if let Some(sif) = &image.sif {
        if let Some(d) = sif
            .descriptors
            .iter()
            .find(|d| d.data_type == DataType::Deffile && d.size <= 1 << 20)
        {
            let file = std::fs::File::open(&image.desc().path)?;
            let bytes = sif.read_object(&file, d)?;
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(image
        .read_file("/.singularity.d/Singularity")?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// `inspect --labels`, `--runscript`, ...: those sections as Apptainer prints them, or with
/// `json` in its shape, `{"data":{"attributes":{...}},"type":"container"}`.
pub fn print_sections(path: &Path, which: &[Section], json: bool) -> Result<()> {
    let image = Image::open(path)?;
    let attrs = attributes(&image, which)?;
    if json {
        let doc = json!({"data": {"attributes": attrs}, "type": "container"});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    for (key, v) in &attrs {
        match v {
            Value::Object(labels) => {
                for (k, v) in labels {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    println!("{k}: {v}");
                }
            }
            Value::String(t) => {
                if which.len() > 1 {
                    println!("=== {key} ===");
                }
                print!("{t}");
                if !t.ends_with('\n') {
                    println!();
                }
            }
            other => println!("{other}"),
        }
    }
    Ok(())
}

pub fn print(path: &Path, as_json: bool) -> Result<()> {
    let image = Image::open(path)?;
    let mut r = report_of(&image)?;
    if as_json {
        // Apptainer's shape too, for scripts that read `.data.attributes.labels`.
        r["data"] = json!({ "attributes": attributes(&image, &[Section::Labels])? });
        r["type"] = json!("container");
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("image:       {}", r["path"].as_str().unwrap_or(""));
    println!(
        "format:      {} ({} bytes)",
        r["format"].as_str().unwrap_or(""),
        r["size"]
    );
    let s = &r["squashfs"];
    println!(
        "squashfs:    at offset {}, {} compression, {}-byte blocks, {} inodes, {} bytes",
        s["offset"],
        s["compressor"].as_str().unwrap_or(""),
        s["block_size"],
        s["inodes"],
        s["bytes_used"]
    );
    if let Some(sif) = r.get("sif") {
        println!(
            "sif:         version {}, arch {}, uuid {}, {} of {} descriptors used",
            sif["version"].as_str().unwrap_or(""),
            sif["arch"].as_str().unwrap_or(""),
            sif["uuid"].as_str().unwrap_or(""),
            sif["descriptors_used"],
            sif["descriptors_total"]
        );
        println!(
            "  {:>3}  {:<14} {:>5}  {:>10} {:>10}  {:<24} details",
            "id", "type", "group", "offset", "size", "name"
        );
        for d in sif["descriptors"].as_array().into_iter().flatten() {
            println!(
                "  {:>3}  {:<14} {:>5}  {:>10} {:>10}  {:<24} {}",
                d["id"].to_string(),
                d["type"].as_str().unwrap_or(""),
                d["group"]
                    .as_u64()
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                d["offset"].to_string(),
                d["size"].to_string(),
                d["name"].as_str().unwrap_or(""),
                d["details"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(labels) = r.get("labels").and_then(|l| l.as_object()) {
        println!("labels:");
        for (k, v) in labels {
            println!(
                "  {k}: {}",
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            );
        }
    }
    if let Some(oci) = r.get("oci_config") {
        println!(
            "oci config:  entrypoint {} cmd {} env {}",
            oci["entrypoint"], oci["cmd"], oci["env"]
        );
    }
    if let Some(rs) = r.get("runscript").and_then(|v| v.as_str()) {
        println!("runscript:");
        for line in rs.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

fn extra_text(e: &Extra) -> String {
    match e {
        Extra::None => String::new(),
        Extra::Partition { fs, part, arch } => format!("{fs} {part} {arch}"),
        Extra::Signature { hash, fingerprint } => {
            format!(
                "{hash}{}",
                fingerprint
                    .as_ref()
                    .map(|f| format!(" key {f}"))
                    .unwrap_or_default()
            )
        }
        Extra::CryptoMessage { format, message } => format!("{format} {message}"),
        Extra::Sbom { format } => format!("{format}"),
        Extra::OciDigest(d) => d.clone(),
        Extra::Raw(b) => format!("{} bytes", b.len()),
    }
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
