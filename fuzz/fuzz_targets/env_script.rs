//! The image's environment scripts (`/.singularity.d/env/*.sh`), which come from the image: the
//! input is one script, read as the launcher reads it without a shell (`apply_scripts`: the
//! parser, the expansion of `$VAR`, and the bounds on text, values and variables), checked by
//! `parses_fully` (which decides whether the image's shell runs it), and also taken as the
//! report a shell gives back (`ShellEnv::finish`: NUL-separated `NAME=value`, then the edits).
#![no_main]

use launcher_runtime::fuzzing::environment::{self, EnvEdit, ShellEnv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let base = vec![
        ("PATH".to_string(), environment::DEFAULT_PATH.to_string()),
        ("HOME".to_string(), "/home/u".to_string()),
    ];
    let scripts = vec![
        ("/.singularity.d/env/90-environment.sh".to_string(), text.clone()),
        ("/.singularity.d/env/91-again.sh".to_string(), text.clone()),
    ];
    if let Ok(env) = environment::apply_scripts(base.clone(), &scripts) {
        let mut seen = std::collections::HashSet::new();
        // One entry per name, each value within the bound a program could be started with.
        for (k, v) in &env {
            assert!(seen.insert(k.clone()), "{k} twice");
            assert!(v.len() <= environment::VALUE_MAX_BYTES, "{k} too long");
        }
    }
    let _ = environment::parses_fully(&text);
    let shell = ShellEnv {
        shell: "/bin/sh".into(),
        cat: "/bin/cat".into(),
        scripts: vec![text],
        base,
        edits: vec![
            EnvEdit::Prepend("PATH".into(), "/.launcher.d/bin".into()),
            EnvEdit::Unset("HOME".into()),
            EnvEdit::Set("X".into(), "y".into()),
        ],
    };
    let _ = shell.argv();
    if let Ok(env) = shell.finish(data) {
        assert!(env.iter().all(|(k, _)| k != "HOME"), "an unset came back");
    }
});
