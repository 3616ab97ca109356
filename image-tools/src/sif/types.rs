//! Enumerations stored as numeric codes in SIF descriptors (format notes §4, §6, §9).

use std::fmt;

/// Defines an enum mirroring a numeric on-disk code, with an `Unknown(u32)`
/// catch-all so that codes we don't know are carried through, not rejected.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $var:ident = $code:literal => $label:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $var,)+
            /// A code this implementation does not know.
            Unknown(u32),
        }

        impl $name {
            /// Maps an on-disk code to the enum (unknown codes are kept).
            pub fn from_code(code: u32) -> Self {
                match code {
                    $($code => Self::$var,)+
                    other => Self::Unknown(other),
                }
            }

            /// The on-disk code.
            pub fn code(self) -> u32 {
                match self {
                    $(Self::$var => $code,)+
                    Self::Unknown(code) => code,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(Self::$var => f.write_str($label),)+
                    Self::Unknown(code) => write!(f, "unknown ({code:#x})"),
                }
            }
        }
    };
}

code_enum! {
    /// Data object type (descriptor offset 0).
    DataType {
        Deffile = 0x4001 => "Deffile",
        EnvVar = 0x4002 => "EnvVar",
        Labels = 0x4003 => "Labels",
        Partition = 0x4004 => "Partition",
        Signature = 0x4005 => "Signature",
        GenericJson = 0x4006 => "GenericJSON",
        Generic = 0x4007 => "Generic",
        CryptoMessage = 0x4008 => "CryptoMessage",
        Sbom = 0x4009 => "SBOM",
        OciRootIndex = 0x400A => "OCIRootIndex",
        OciBlob = 0x400B => "OCIBlob",
    }
}

code_enum! {
    /// File system type of a Partition object.
    FsType {
        Squash = 1 => "Squashfs",
        Ext3 = 2 => "Ext3",
        ImmuObj = 3 => "ImmuObj",
        Raw = 4 => "Raw",
        EncryptedSquashfs = 5 => "EncryptedSquashfs",
    }
}

code_enum! {
    /// Role of a Partition object.
    PartType {
        System = 1 => "System",
        /// The primary system partition: the container's root file system.
        PrimSys = 2 => "PrimSys",
        Data = 3 => "Data",
        Overlay = 4 => "Overlay",
    }
}

code_enum! {
    /// Hash type of a Signature object.
    HashType {
        Sha256 = 1 => "SHA-256",
        Sha384 = 2 => "SHA-384",
        Sha512 = 3 => "SHA-512",
        Blake2s256 = 4 => "BLAKE2s-256",
        Blake2b256 = 5 => "BLAKE2b-256",
    }
}

code_enum! {
    /// Format of a CryptoMessage object.
    CryptoFormat {
        OpenPgp = 1 => "OpenPGP",
        Pem = 2 => "PEM",
    }
}

code_enum! {
    /// Message type of a CryptoMessage object.
    MessageType {
        ClearSignature = 0x100 => "clear signature",
        RsaOaep = 0x200 => "RSA-OAEP",
    }
}

code_enum! {
    /// Format of an SBOM object.
    SbomFormat {
        CycloneDxJson = 1 => "cyclonedx-json",
        CycloneDxXml = 2 => "cyclonedx-xml",
        GithubJson = 3 => "github-json",
        SpdxJson = 4 => "spdx-json",
        SpdxRdf = 5 => "spdx-rdf",
        SpdxTagValue = 6 => "spdx-tag-value",
        SpdxYaml = 7 => "spdx-yaml",
        SyftJson = 8 => "syft-json",
    }
}

/// Architecture codes (§4), indexed by code. Names are Go's GOARCH spellings.
const ARCHES: [&str; 14] = [
    "unknown", "386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "mips", "mipsle", "mips64",
    "mips64le", "s390x", "riscv64", "loong64",
];

/// Name for a 3-byte arch field (two ASCII digits + NUL). Anything not in the
/// table, including malformed bytes, is "unknown" (not an error, per the spec).
pub fn arch_name(code: &[u8; 3]) -> &'static str {
    let n = match code {
        [a @ b'0'..=b'9', b @ b'0'..=b'9', 0] => usize::from((a - b'0') * 10 + (b - b'0')),
        _ => 0,
    };
    ARCHES.get(n).copied().unwrap_or("unknown")
}

/// Encodes an arch name; "" and "unknown" mean `00`. `None` for names we don't know.
pub fn arch_code(name: &str) -> Option<[u8; 3]> {
    let n = if name.is_empty() {
        0
    } else {
        ARCHES.iter().position(|&a| a == name)?
    };
    // n < 100 because the table is short.
    Some([b'0' + (n / 10) as u8, b'0' + (n % 10) as u8, 0])
}

/// Linked ID of a descriptor (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Link {
    #[default]
    None,
    /// Links to the object with this ID.
    Object(u32),
    /// Links to a whole group (stored with the 0xF0000000 flag).
    Group(u32),
}

/// Type-specific descriptor metadata (the 384-byte "extra" area, §9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Extra {
    /// All zeros.
    #[default]
    None,
    Partition {
        fs: FsType,
        part: PartType,
        /// GOARCH name ("amd64"), "unknown" for code `00` or codes not in the table.
        arch: String,
    },
    Signature {
        hash: HashType,
        /// Lowercase hex of the signer's key fingerprint (first 20 bytes of the
        /// entity field); `None` when those bytes are all zero (DSSE signatures).
        fingerprint: Option<String>,
    },
    CryptoMessage {
        format: CryptoFormat,
        message: MessageType,
    },
    Sbom {
        format: SbomFormat,
    },
    /// OCI objects: digest text such as "sha256:<64 hex>".
    OciDigest(String),
    /// Any other non-zero extra, trailing NULs removed.
    Raw(Vec<u8>),
}
