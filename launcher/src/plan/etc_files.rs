//! Generated /etc/passwd and /etc/group: the image's entries plus the caller's.

use crate::gather::host::HostInfo;
use std::path::Path;

/// The image's passwd with the caller's entry added (replacing an entry with the same name or uid).
pub fn passwd(image_passwd: Option<&str>, host: &HostInfo, home: &Path, shell: &str) -> String {
    let mine = format!(
        "{}:x:{}:{}:{}:{}:{}",
        host.user,
        host.uid,
        host.gid,
        host.gecos,
        home.display(),
        shell
    );
    merge(image_passwd, &mine, |fields| {
        fields.first() == Some(&host.user.as_str())
            || fields.get(2) == Some(&host.uid.to_string().as_str())
    })
}

/// The image's group file with the caller's groups added (each listing the caller as a member).
pub fn group(image_group: Option<&str>, host: &HostInfo) -> String {
    let mut text = image_group.unwrap_or("").to_string();
    for (gid, name) in &host.group_names {
        let line = format!("{name}:x:{gid}:{}", host.user);
        text = merge(Some(&text), &line, |fields| {
            fields.first() == Some(&name.as_str())
                || fields.get(2) == Some(&gid.to_string().as_str())
        });
    }
    if text.is_empty() {
        text.push('\n');
    }
    text
}

fn merge(base: Option<&str>, line: &str, same: impl Fn(&[&str]) -> bool) -> String {
    let mut out = String::new();
    for existing in base.unwrap_or("").lines() {
        let fields: Vec<&str> = existing.split(':').collect();
        if !same(&fields) {
            out.push_str(existing);
            out.push('\n');
        }
    }
    out.push_str(line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn host() -> HostInfo {
        HostInfo {
            uid: 4242,
            gid: 4242,
            user: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            gecos: "Alice".into(),
            cwd: "/home/alice".into(),
            env: vec![],
            group_names: vec![(4242, "alice".into()), (100, "users".into())],
            pmix_dirs: vec![],
            existing_etc: vec![],
        }
    }

    #[test]
    fn passwd_appends_and_replaces() {
        let img = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let out = passwd(Some(img), &host(), &PathBuf::from("/home/alice"), "/bin/sh");
        assert_eq!(
            out,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4242:Alice:/home/alice:/bin/sh\n"
        );
        let out = passwd(None, &host(), &PathBuf::from("/h"), "/bin/sh");
        assert_eq!(out, "alice:x:4242:4242:Alice:/h:/bin/sh\n");
    }

    #[test]
    fn group_lists_caller_groups() {
        let out = group(Some("root:x:0:\nusers:x:100:\n"), &host());
        assert_eq!(out, "root:x:0:\nalice:x:4242:alice\nusers:x:100:alice\n");
    }
}
