//! The site config: the input is the system file, the `$LAUNCHER_CONFIG` file and the user's
//! file, read by the launcher's own `SiteConfig::load_from` (parse, validation, the checks of
//! the later files against the system file's locks, then the merges), then used as a launch
//! uses it: the derived paths and a plan built with it (site binds, devices, environment
//! edits).
#![no_main]

use launcher_runtime::gather::injection::Injection;
use launcher_runtime::gather::site_config::{SiteConfig, CONFIG_ENV};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let system = launcher_fuzz::image_file(data);
    let xdg = launcher_fuzz::scratch().join("xdg");
    let user = xdg.join("launcher/launcher.yaml");
    if std::fs::create_dir_all(xdg.join("launcher")).is_err()
        || std::fs::write(&user, data).is_err()
    {
        std::process::abort();
    }
    let env = vec![
        (CONFIG_ENV.to_string(), system.display().to_string()),
        ("XDG_CONFIG_HOME".to_string(), xdg.display().to_string()),
    ];
    let Ok(site) = SiteConfig::load_from(&system, &env, &launcher_fuzz::scratch()) else {
        return;
    };
    let _ = (site.cdi_dirs(), site.ld_so_cache(), site.dev_dir());
    let _ = (site.locked_vars(), site.locked_destinations());
    launcher_fuzz::plan_both(site, Injection::default());
});
