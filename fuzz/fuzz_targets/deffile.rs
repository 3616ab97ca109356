//! Definition files: the parser (stages, headers, sections, `{{ NAME }}` substitution) on any
//! text, with one build argument so the substitution path with a value is taken too. It must
//! return a definition or an error, never panic; a definition it returns must hold a stage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut args = BTreeMap::new();
    args.insert("A".to_string(), "x{{ A }}y".to_string());
    if let Ok(d) = image_tools::deffile::parse("fuzz.def", &text, &args) {
        let last = d.last();
        let _ = last.post.as_ref().map(|p| (p.shell(), p.shebang_and_body()));
    }
});
