//! `flagella-cni`: the CNI plugin binary. Everything is in `control::cni`; this reads the
//! environment and stdin, runs one command and prints its outcome.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;

const HELP: &str = "\
flagella-cni: Flagella's CNI plugin (CNI specification 1.1; speaks 0.3.0 to 1.1.0)

A container runtime runs it; a person rarely does. The runtime sets
  CNI_COMMAND      ADD | DEL | CHECK | VERSION | STATUS | GC
  CNI_CONTAINERID  the container's id
  CNI_NETNS        the path of the container's network namespace (ADD, CHECK)
  CNI_IFNAME       the interface name inside the container (eth0)
  CNI_ARGS         K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_SERVICE_ACCOUNT=..
and passes the network configuration on stdin, e.g.
  {\"cniVersion\":\"1.1.0\",\"name\":\"flagella\",\"type\":\"flagella-cni\",
   \"etcdEndpoints\":[\"http://127.0.0.1:2379\"]}
ADD prints the result (interfaces, ips, routes) on stdout; failures print the spec's error
object ({\"code\",\"msg\",\"details\"}) and exit 1.

Install: the binary in /opt/cni/bin, scripts/cni/10-flagella.conflist in /etc/cni/net.d.
Needs `ip` (iproute2) and `nsenter` (util-linux), runs as root. Docs: docs/cni.md.

Options: -h, --help  this text;  --version  the spec versions it speaks";

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("-h" | "--help")) {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if arg.as_deref() == Some("--version") {
        println!(
            "flagella-cni {} (CNI {})",
            env!("CARGO_PKG_VERSION"),
            control::cni::SUPPORTED_VERSIONS.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    if !vars.contains_key("CNI_COMMAND") {
        eprintln!("{HELP}");
        return ExitCode::from(2);
    }
    let mut stdin = Vec::new();
    let limit = (control::cni::MAX_CONFIG_BYTES + 1) as u64;
    if let Err(e) = std::io::stdin().take(limit).read_to_end(&mut stdin) {
        eprintln!("flagella-cni: cannot read the configuration on stdin: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let err = control::cni::CniError::new(
                control::cni::code::IO_FAILURE,
                format!("cannot start the async runtime: {e}"),
                "check the process limits (threads, memory)",
            );
            println!("{}", err.to_json("1.1.0"));
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(control::cni::run(&vars, &stdin));
    let mut out = std::io::stdout();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    ExitCode::from(outcome.exit_code)
}
