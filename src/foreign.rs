//! Apptainer's exec/run/shell/instance flags that the launcher does not implement. A job
//! script written for Apptainer gets, for each, what a user would want rather than clap's
//! "unexpected argument": harmless ones are accepted (what they ask for is what the launcher
//! does anyway), the others are refused in one line that says why and what to use instead.
//! Set through the environment (`APPTAINER_NET=1` in a site module), a refused one is ignored
//! with a warning: a site's variables must not stop every job.
//!
//! docs/apptainer.md has the whole side-by-side table.

use anyhow::{bail, Result};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

/// What the launcher does with a flag it does not implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accepted and ignored: the launcher already behaves so.
    Accept,
    /// Refused: why, and what to do instead.
    Refuse(&'static str),
}

/// One of Apptainer's flags.
#[derive(Debug)]
pub struct Foreign {
    pub long: &'static str,
    pub short: Option<char>,
    /// Takes a value (`--memory 4G`).
    pub value: bool,
    /// Its environment keys, after `APPTAINER_` / `SINGULARITY_`.
    pub env: &'static [&'static str],
    pub answer: Answer,
}

const NETWORK: &str = "the container uses the host's network, which MPI and Slurm rely on; no network namespace is made";
const LIMITS: &str = "resource limits are the scheduler's: ask Slurm (srun --mem, --cpus-per-task; its cgroups apply to the container's processes)";
const PRIVS: &str = "the launcher runs with your own privileges only: there are no capabilities to keep or add, and setuid programs do not gain privilege";
const NAMESPACE: &str = "the container's processes stay in the host's PID, IPC and UTS namespaces (Slurm and MPI see and signal them as usual)";

macro_rules! flag {
    ($long:literal, $short:expr, $value:literal, [$($env:literal),*], $answer:expr) => {
        Foreign { long: $long, short: $short, value: $value, env: &[$($env),*], answer: $answer }
    };
}

/// Every flag of Apptainer's exec/run/shell/instance start that the launcher has no option
/// of its own for (from Apptainer's `action_flags.go`).
pub const FOREIGN: &[Foreign] = &[
    flag!("app", None, true, ["APP", "APPNAME"], Answer::Refuse("SCIF apps are not built or run here: run the app's program with `launcher exec IMAGE PROGRAM`")),
    flag!("mount", None, true, ["MOUNT"], Answer::Refuse("use --bind SRC[:DST[:ro]]")),
    flag!("scratch", Some('S'), true, ["SCRATCH", "SCRATCHDIR"], Answer::Refuse("bind a directory of your own there instead: --bind $TMPDIR/scratch:DIR")),
    flag!("workdir", Some('W'), true, ["WORKDIR"], Answer::Refuse("with --contain, /tmp and /var/tmp are fresh tmpfs; to keep them, bind directories: --bind DIR/tmp:/tmp,DIR/var_tmp:/var/tmp")),
    flag!("disable-cache", None, false, ["DISABLE_CACHE"], Answer::Accept),
    flag!("shell", None, true, ["SHELL"], Answer::Refuse("run the shell you want with `launcher exec IMAGE /path/to/shell`")),
    flag!("hostname", None, true, ["HOSTNAME"], Answer::Refuse(NAMESPACE)),
    flag!("network", None, true, ["NETWORK"], Answer::Refuse(NETWORK)),
    flag!("network-args", None, true, ["NETWORK_ARGS"], Answer::Refuse(NETWORK)),
    flag!("dns", None, true, ["DNS"], Answer::Refuse(NETWORK)),
    flag!("net", Some('n'), false, ["NET", "UNSHARE_NET"], Answer::Refuse(NETWORK)),
    flag!("netns-path", None, true, ["NETNS_PATH"], Answer::Refuse(NETWORK)),
    flag!("security", None, true, ["SECURITY"], Answer::Refuse("SELinux, AppArmor and seccomp profiles are not applied by the launcher")),
    flag!("apply-cgroups", None, true, ["APPLY_CGROUPS"], Answer::Refuse(LIMITS)),
    flag!("blkio-weight", None, true, ["BLKIO_WEIGHT"], Answer::Refuse(LIMITS)),
    flag!("blkio-weight-device", None, true, ["BLKIO_WEIGHT_DEVICE"], Answer::Refuse(LIMITS)),
    flag!("cpu-shares", None, true, ["CPU_SHARES"], Answer::Refuse(LIMITS)),
    flag!("cpus", None, true, [], Answer::Refuse(LIMITS)),
    flag!("cpuset-cpus", None, true, ["CPUSET_CPUS"], Answer::Refuse(LIMITS)),
    flag!("cpuset-mems", None, true, ["CPUSET_MEMS"], Answer::Refuse(LIMITS)),
    flag!("memory", None, true, ["MEMORY"], Answer::Refuse(LIMITS)),
    flag!("memory-reservation", None, true, ["MEMORY_RESERVATION"], Answer::Refuse(LIMITS)),
    flag!("memory-swap", None, true, ["MEMORY_SWAP"], Answer::Refuse(LIMITS)),
    flag!("oom-kill-disable", None, false, ["OOM_KILL_DISABLE"], Answer::Refuse(LIMITS)),
    flag!("pids-limit", None, true, ["PIDS_LIMIT"], Answer::Refuse(LIMITS)),
    flag!("fusemount", None, true, ["FUSESPEC"], Answer::Refuse("FUSE mounts are not made inside the container: mount on the host and --bind the mount point")),
    flag!("boot", None, false, ["BOOT"], Answer::Refuse("there is no init inside: run the command itself")),
    flag!("compat", None, false, ["COMPAT"], Answer::Refuse("say what you want of it: -C (--containall) and --writable-tmpfs")),
    flag!("compat32", None, false, ["COMPAT32"], Answer::Refuse("32-bit GPU driver libraries are not brought in")),
    flag!("no-init", None, false, ["NOSHIMINIT"], Answer::Accept),
    flag!("pid", Some('p'), false, ["PID", "UNSHARE_PID"], Answer::Refuse(NAMESPACE)),
    flag!("no-pid", None, false, ["NO_PID"], Answer::Accept),
    flag!("ipc", Some('i'), false, ["IPC", "UNSHARE_IPC"], Answer::Refuse(NAMESPACE)),
    flag!("uts", None, false, ["UTS", "UNSHARE_UTS"], Answer::Refuse(NAMESPACE)),
    flag!("keep-privs", None, false, ["KEEP_PRIVS"], Answer::Refuse(PRIVS)),
    flag!("no-privs", None, false, ["NO_PRIVS"], Answer::Accept),
    flag!("add-caps", None, true, ["ADD_CAPS"], Answer::Refuse(PRIVS)),
    flag!("drop-caps", None, true, ["DROP_CAPS"], Answer::Accept),
    flag!("allow-setuid", None, false, ["ALLOW_SETUID"], Answer::Refuse(PRIVS)),
    flag!("no-env", None, false, ["NOENV"], Answer::Refuse("use --cleanenv (-e) for a minimal environment")),
    flag!("no-umask", None, false, ["NO_UMASK"], Answer::Refuse("the command keeps your umask; set another in the command (umask 022; ...)")),
    flag!("no-eval", None, false, ["NO_EVAL"], Answer::Refuse("not supported: variables set with --env, --env-file and APPTAINERENV_ are taken as given, the image's environment scripts as its shell runs them (docs/environment.md)")),
    flag!("dmtcp-launch", None, true, ["DMTCP_LAUNCH"], Answer::Refuse("DMTCP checkpointing is not supported")),
    flag!("dmtcp-restart", None, true, ["DMTCP_RESTART"], Answer::Refuse("DMTCP checkpointing is not supported")),
    flag!("unsquash", None, false, ["UNSQUASH"], Answer::Accept),
    flag!("underlay", None, false, ["UNDERLAY"], Answer::Accept),
    flag!("sharens", None, false, ["SHARENS"], Answer::Accept),
    flag!("runscript-timeout", None, true, ["RUNSCRIPT_TIMEOUT"], Answer::Refuse("not supported: an OCI image's runscript is written at conversion, without a timeout")),
    flag!("intel-hpu", None, false, ["INTEL_HPU"], Answer::Refuse("Intel Gaudi devices are not brought in: --nv and --rocm, or a CDI device (--device vendor/class=name)")),
    flag!("cdi-dirs", None, true, [], Answer::Refuse("CDI spec directories are the site's: cdi.spec_dirs in launcher.yaml (docs/admin.md)")),
];

/// The foreign flags given on a command line (exec, run, shell, instance start).
#[derive(Clone, Debug, Default)]
pub struct ForeignOpts {
    pub given: Vec<&'static Foreign>,
}

impl ForeignOpts {
    /// A refused flag on the command line is an error (the first one); a refused flag set
    /// through the environment is a warning each (unless `-q`). Accepted ones change nothing.
    pub fn check(&self, env: &[(String, String)]) -> Result<()> {
        if let Some(f) = self.given.iter().find(|f| f.answer != Answer::Accept) {
            if let Answer::Refuse(why) = f.answer {
                bail!("--{} is not supported: {why}", f.long);
            }
        }
        for f in FOREIGN {
            let Answer::Refuse(why) = f.answer else {
                continue;
            };
            for key in f.env {
                let Some((name, v)) = launcher_runtime::options::apptainer::value(env, key) else {
                    continue;
                };
                let off = matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "" | "0" | "false" | "no" | "off"
                );
                if !off {
                    launcher_runtime::debug::warn(format_args!(
                        "ignoring {name} (--{}): {why}",
                        f.long
                    ));
                }
            }
        }
        Ok(())
    }
}

impl FromArgMatches for ForeignOpts {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut o = ForeignOpts::default();
        o.update_from_arg_matches(m)?;
        Ok(o)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for f in FOREIGN {
            let id = id(f);
            let given = if f.value {
                m.contains_id(id)
                    && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            } else {
                m.get_flag(id)
            };
            if given {
                self.given.push(f);
            }
        }
        Ok(())
    }
}

/// The argument id: the long name (with its hyphens no id of the launcher's own options,
/// field names, can clash; `every_flag_once...` checks the table itself).
fn id(f: &Foreign) -> &'static str {
    f.long
}

impl Args for ForeignOpts {
    fn augment_args(mut cmd: Command) -> Command {
        for f in FOREIGN {
            let mut arg = Arg::new(id(f)).long(f.long).hide(true);
            if let Some(s) = f.short {
                arg = arg.short(s);
            }
            arg = if f.value {
                arg.action(ArgAction::Set).value_name("VALUE")
            } else {
                arg.action(ArgAction::SetTrue)
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_once_and_refusals_say_what_to_do() {
        let mut longs: Vec<&str> = FOREIGN.iter().map(|f| f.long).collect();
        longs.sort();
        let n = longs.len();
        longs.dedup();
        assert_eq!(longs.len(), n, "a flag twice");
        for f in FOREIGN {
            if let Answer::Refuse(why) = f.answer {
                assert!(!why.is_empty() && !why.ends_with('.'), "--{}", f.long);
            }
        }
    }

    #[test]
    fn refused_on_the_command_line_warned_from_the_environment() {
        let net = FOREIGN.iter().find(|f| f.long == "net").unwrap();
        let o = ForeignOpts { given: vec![net] };
        let e = o.check(&[]).unwrap_err().to_string();
        assert!(e.starts_with("--net is not supported: "), "{e}");
        let accepted = FOREIGN.iter().find(|f| f.long == "no-init").unwrap();
        let o = ForeignOpts {
            given: vec![accepted],
        };
        let env = vec![("APPTAINER_NET".to_string(), "1".to_string())];
        assert!(o.check(&env).is_ok());
    }
}
