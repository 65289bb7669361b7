//! Which generator runs (`--generator`): the dispatch lives here, above the generators, so that
//! `traffic` (the socket and packet generators, the sink and the helpers they share) and the
//! generators built on those helpers (`pktgen`, `xdpgen`) import in one direction only.

use crate::cli::{GenArgs, Generator};
use crate::traffic::{generate_packets, generate_socket, GenResult};
use crate::{pktgen, xdpgen, BenchError};

/// Runs the generator `args` names until its duration is over.
pub fn generate(args: &GenArgs) -> Result<GenResult, BenchError> {
    if (args.rate.is_some() || args.stamp) && args.generator != Generator::Xdp {
        return Err(BenchError::Failed(
            "--rate and --stamp need --generator xdp (the only paced, stamping generator)".into(),
        ));
    }
    match args.generator {
        Generator::Socket => generate_socket(args),
        Generator::Packet => generate_packets(args),
        Generator::Pktgen => pktgen::generate(args),
        Generator::Xdp => xdpgen::generate(args),
    }
}
