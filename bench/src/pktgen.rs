//! The kernel's packet generator, where this kernel has it (`/proc/net/pktgen`, per network
//! namespace). It sends from one kernel thread per CPU (`kpktgend_<cpu>`) straight to the
//! device's transmit path, without sockets, so it costs far less per packet than `sendmmsg`.
//!
//! The pktgen commands live in one place, the script `scripts/pktgen/pktgen_udp_flows.sh`
//! (helpers in `functions.sh`, in the style of the kernel's `samples/pktgen`), so a user can run
//! or copy the same thing by hand. `generate` runs that script with `--generator pktgen`'s
//! options, lets it send for the duration, sends it SIGINT (its blocking `start` returns and
//! pktgen stops its threads) and reads the `sent <packets>` line it prints after giving the
//! device back. Where pktgen is absent, `available` refuses with what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::GenArgs;
use crate::traffic::GenResult;
use crate::BenchError;

const PROC: &str = "/proc/net/pktgen";

/// The script that `--generator pktgen` runs, in the scripts directory.
pub const SCRIPT: &str = "pktgen_udp_flows.sh";

/// Overrides where the scripts are looked for (a directory holding [`SCRIPT`]).
pub const SCRIPTS_ENV: &str = "FLAGELLA_PKTGEN_SCRIPTS";

/// The script's exit code for "no pktgen here" (EX_UNAVAILABLE, as this binary's).
const SCRIPT_UNAVAILABLE: i32 = 69;

/// `Ok` when pktgen can be used here, else why not.
pub fn available() -> Result<(), BenchError> {
    detect(Path::new(PROC))
}

/// `Ok` when `proc_dir` is a pktgen directory (it has the control file `pgctrl`).
fn detect(proc_dir: &Path) -> Result<(), BenchError> {
    if proc_dir.join("pgctrl").exists() {
        Ok(())
    } else {
        Err(BenchError::Unavailable(format!(
            "pktgen is not available on this kernel ({}/pgctrl is missing): run `modprobe \
             pktgen` as root, or use a kernel built with CONFIG_NET_PKTGEN; or use --generator \
             xdp (no module needed)",
            proc_dir.display()
        )))
    }
}

/// Where [`SCRIPT`] may be, in order: `$FLAGELLA_PKTGEN_SCRIPTS`, `scripts/pktgen` of the
/// workspace this binary was built in (`target/<profile>/flagella-bench`), and the source tree
/// it was compiled from.
fn script_dirs(env_dir: Option<PathBuf>, exe: Option<PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env_dir.into_iter().collect();
    if let Some(workspace) = exe.as_deref().and_then(|e| e.ancestors().nth(3)) {
        dirs.push(workspace.join("scripts/pktgen"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pktgen"));
    dirs
}

/// The first [`SCRIPT`] found in `dirs`, or what to do.
fn find_script(dirs: &[PathBuf]) -> Result<PathBuf, BenchError> {
    dirs.iter()
        .map(|d| d.join(SCRIPT))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            BenchError::Unavailable(format!(
                "{SCRIPT} not found (looked in {}): set {SCRIPTS_ENV} to the repository's \
                 scripts/pktgen directory",
                looked.join(", ")
            ))
        })
}

/// The script's options for `gen --generator pktgen`'s arguments.
fn script_args(args: &GenArgs) -> Result<Vec<String>, BenchError> {
    let dev = args.dev.as_deref().ok_or_else(|| {
        BenchError::Failed("pktgen needs --dev (the interface to send on)".into())
    })?;
    let mac = args
        .dst_mac
        .as_deref()
        .ok_or_else(|| BenchError::Failed("pktgen needs --dst-mac (the next hop's MAC)".into()))?;
    let flag = |f: &str, v: String| [f.to_string(), v];
    Ok([
        flag("-i", dev.to_string()),
        flag("-d", args.dst.ip().to_string()),
        flag("-m", mac.to_string()),
        flag("-p", args.dst.port().to_string()),
        flag("-P", args.src_port.to_string()),
        flag("-f", args.flows.to_string()),
        flag("-s", args.size.to_string()),
        flag("-t", args.core.unwrap_or(0).to_string()),
    ]
    .concat())
}

/// The packet count in the script's last `sent <packets>` line.
fn parse_script_sent(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.trim().parse().ok())
}

/// Runs pktgen as `gen --generator pktgen` asks.
pub fn generate(args: &GenArgs) -> Result<GenResult, BenchError> {
    available()?;
    let exe = std::env::current_exe().ok();
    let script = find_script(&script_dirs(
        std::env::var_os(SCRIPTS_ENV).map(PathBuf::from),
        exe,
    ))?;
    let mut child = Command::new("bash")
        .arg(&script)
        .args(script_args(args)?)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::io(format!("starting {}", script.display()), e))?;
    let started = Instant::now();
    let ended_early = send_for(&mut child, Duration::from_secs_f64(args.duration));
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the child this function spawned and has not yet waited for, so
        // the PID cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    let seconds = started.elapsed().as_secs_f64();
    let output = child
        .wait_with_output()
        .map_err(|e| BenchError::io(format!("waiting for {}", script.display()), e))?;
    ended_early?;
    script_result(&output, seconds)
}

/// Waits for the duration, or until the script ends early (it failed) or a signal stops us.
fn send_for(child: &mut std::process::Child, duration: Duration) -> Result<(), BenchError> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if crate::signals::stopping() {
            return Err(BenchError::Interrupted);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The generator's result from the script's exit and output.
fn script_result(output: &std::process::Output, seconds: f64) -> Result<GenResult, BenchError> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (output.status.code(), parse_script_sent(&stdout)) {
        (Some(SCRIPT_UNAVAILABLE), _) => Err(BenchError::Unavailable(
            "pktgen is not available in the generator's namespace (the script's message is \
             above): modprobe pktgen, or use --generator xdp"
                .into(),
        )),
        (_, Some(sent)) => Ok(GenResult {
            sent,
            send_errors: 0,
            seconds,
        }),
        (code, None) => Err(BenchError::Failed(format!(
            "{SCRIPT} printed no `sent` line (exit {code:?}); its message is above: rerun it by \
             hand with -v to see every pktgen command"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Generator;

    fn gen_args() -> GenArgs {
        GenArgs {
            dst: "10.81.0.12:9000".parse().unwrap(),
            size: 64,
            flows: 100,
            src_port: 20000,
            duration: 1.0,
            batch: 64,
            core: Some(1),
            generator: Generator::Pktgen,
            dev: Some("eth0".into()),
            dst_mac: Some("02:00:00:00:00:01".into()),
            src: None,
            rate: None,
            stamp: false,
        }
    }

    fn scripts_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pktgen")
    }

    /// Runs the script with `envs`; its exit code, stdout and stderr.
    fn run_script(args: &[String], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let out = Command::new("bash")
            .arg(scripts_dir().join(SCRIPT))
            .args(args)
            .env_remove("PKTGEN_DRY_RUN")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn detection_needs_the_control_file_and_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("fl-pktgen-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = detect(&dir).unwrap_err().to_string();
        assert!(err.contains("pgctrl is missing"), "{err}");
        assert!(err.contains("modprobe pktgen"), "{err}");
        assert!(err.contains("CONFIG_NET_PKTGEN"), "{err}");
        std::fs::write(dir.join("pgctrl"), "").unwrap();
        let found = detect(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.is_ok());
    }

    #[test]
    fn this_machine_agrees_with_the_proc_file() {
        assert_eq!(
            available().is_ok(),
            Path::new("/proc/net/pktgen/pgctrl").exists()
        );
    }

    #[test]
    fn script_options_carry_every_generator_argument() {
        let args = script_args(&gen_args()).unwrap();
        let expected = [
            "-i",
            "eth0",
            "-d",
            "10.81.0.12",
            "-m",
            "02:00:00:00:00:01",
            "-p",
            "9000",
            "-P",
            "20000",
            "-f",
            "100",
            "-s",
            "64",
            "-t",
            "1",
        ];
        assert_eq!(args, expected);
        let mut no_dev = gen_args();
        no_dev.dev = None;
        assert!(script_args(&no_dev)
            .unwrap_err()
            .to_string()
            .contains("--dev"));
        let mut no_mac = gen_args();
        no_mac.dst_mac = None;
        assert!(script_args(&no_mac)
            .unwrap_err()
            .to_string()
            .contains("--dst-mac"));
    }

    #[test]
    fn script_writes_the_pktgen_commands_in_order() {
        let args = script_args(&gen_args()).unwrap();
        let (code, stdout, stderr) = run_script(&args, &[("PKTGEN_DRY_RUN", "1")]);
        assert_eq!(code, Some(0), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        let expected = [
            "kpktgend_1 rem_device_all",
            "kpktgend_1 add_device eth0",
            "eth0 count 0",
            "eth0 clone_skb 0",
            // The frame plus the 4-byte FCS pktgen counts.
            "eth0 pkt_size 68",
            "eth0 dst 10.81.0.12",
            "eth0 dst_mac 02:00:00:00:00:01",
            "eth0 udp_dst_min 9000",
            "eth0 udp_dst_max 9000",
            "eth0 udp_src_min 20000",
            "eth0 udp_src_max 20099",
            "eth0 flag UDPSRC_RND",
            "pgctrl start",
            "sent 0",
            // The EXIT trap gives the device back.
            "kpktgend_1 rem_device_all",
        ];
        assert_eq!(lines, expected);
        assert_eq!(parse_script_sent(&stdout), Some(0));
    }

    #[test]
    fn script_without_pktgen_exits_unavailable_and_says_what_to_do() {
        let args = script_args(&gen_args()).unwrap();
        let (code, stdout, stderr) =
            run_script(&args, &[("PKTGEN_PROC_DIR", "/nonexistent/pktgen")]);
        assert_eq!(code, Some(SCRIPT_UNAVAILABLE));
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains("/nonexistent/pktgen/pgctrl is missing"),
            "{stderr}"
        );
        assert!(stderr.contains("modprobe pktgen"), "{stderr}");
    }

    #[test]
    fn script_refuses_bad_options_with_usage() {
        let mut args = script_args(&gen_args()).unwrap();
        let flows = args.iter().position(|a| a == "-f").unwrap() + 1;
        args[flows] = "65535".into(); // 20000 + 65535 - 1 is past the last port
        let (code, _, stderr) = run_script(&args, &[("PKTGEN_DRY_RUN", "1")]);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("ports end at 65535"), "{stderr}");
        assert!(stderr.contains("Usage:"), "{stderr}");
        let (code, _, stderr) = run_script(&["-d".into(), "10.0.0.1".into()], &[]);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("-i DEV is required"), "{stderr}");
    }

    #[test]
    fn script_is_found_from_the_environment_then_the_workspace() {
        let env_dir = PathBuf::from("/nonexistent/env-scripts");
        let exe = PathBuf::from("/ws/target/release/flagella-bench");
        let dirs = script_dirs(Some(env_dir.clone()), Some(exe));
        assert_eq!(dirs[0], env_dir);
        assert_eq!(dirs[1], PathBuf::from("/ws/scripts/pktgen"));
        assert_eq!(find_script(&dirs).unwrap(), dirs[2].join(SCRIPT));
        let err = find_script(&dirs[..2]).unwrap_err().to_string();
        assert!(
            err.contains(SCRIPTS_ENV) && err.contains("/ws/scripts/pktgen"),
            "{err}"
        );
    }

    #[test]
    fn sent_line_is_the_last_one() {
        assert_eq!(parse_script_sent("noise\nsent 12345\n"), Some(12345));
        assert_eq!(parse_script_sent("sent 1\nsent 2\n"), Some(2));
        assert_eq!(parse_script_sent("sent x\n"), None);
        assert_eq!(parse_script_sent(""), None);
    }
}
