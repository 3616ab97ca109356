//! `launcher exec|run|shell --fakeroot --writable DIR ...`: the command as fake root in a
//! sandbox directory, with the machinery of a definition file's `%post` (image-tools'
//! `defbuild::fake`: user namespace, seccomp-emulated set*id/chown), so `apt-get install`
//! works and its writes stay in DIR. Not the runtime's launch: fake root lives in
//! image-tools, which the runtime crate does not link (scripts/check-crate-weight.sh).

use anyhow::{bail, Context, Result};
use image_tools::defbuild::{fake, SOURCE_ENV_SCRIPTS};
use launcher_runtime::options::Action;
use std::path::Path;

/// Runs the action in `dir` and returns its exit status (128 + N for a signal).
pub fn run(dir: &Path, action: Action) -> Result<i32> {
    let dir = &std::fs::canonicalize(dir)
        .with_context(|| format!("sandbox directory '{}'", dir.display()))?;
    // The same test as a launch's (image/dir.rs): a root file system, not a data directory.
    if !["bin", "usr", ".singularity.d"]
        .iter()
        .any(|m| dir.join(m).is_dir())
    {
        bail!(
            "'{}' is a directory but not a root file system (it has no /bin, /usr or /.singularity.d)",
            dir.display()
        );
    }
    let (script, args) = match action {
        Action::Exec(cmd) => ("exec \"$@\"", cmd),
        Action::Run(args) => ("exec /.singularity.d/runscript \"$@\"", args),
        Action::Shell => (
            "if [ -x /bin/bash ]; then exec /bin/bash; fi; exec /bin/sh",
            Vec::new(),
        ),
        Action::StartInstance(_) => bail!(
            "instance start with --fakeroot: a fake-root session runs one command in a sandbox directory and is not kept as an instance"
        ),
    };
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        format!("{SOURCE_ENV_SCRIPTS} {script}"),
        "sh".into(),
    ];
    argv.extend(args);
    // The caller's stdin, as a launch gives it (a shell, a pipe); a build's %post has none.
    let status = fake(dir, None, argv, true)
        .with_context(|| format!("running as fake root in '{}'", dir.display()))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 255,
    })
}
