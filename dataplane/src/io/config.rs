//! How a worker's AF_XDP sockets and UMEM are set up: bind mode and ring geometry.
//!
//! Plain configuration, validated where it is used (`umem`): ring sizes must be powers of two,
//! the frame size a power of two of at least 2048.

use crate::frame::DEFAULT_HEADROOM;

/// How sockets bind: the kernel's choice, or forced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, else copy (veth: copy).
    #[default]
    Auto,
    /// `XDP_COPY`.
    Copy,
    /// `XDP_ZEROCOPY`: binding fails on drivers without it.
    ZeroCopy,
}

/// UMEM and ring geometry. Ring sizes are powers of two; the defaults keep the fill ring deep
/// (frames lost to an empty fill ring were ~8% with 2048 frames per direction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM chunk (power of two, >= 2048).
    pub frame_size: u32,
    /// Headroom reserved in each chunk for the pipeline, on top of the kernel's 256 bytes.
    pub frame_headroom: u32,
    /// UMEM chunks per port; the UMEM has `ports * frames_per_port`.
    pub frames_per_port: u32,
    pub fill_size: u32,
    pub comp_size: u32,
    pub rx_size: u32,
    pub tx_size: u32,
    pub mode: BindMode,
    /// Copy-mode descriptors per `sendto` (`XDP_MAX_TX_SKB_BUDGET`, kernel 6.17+; capped at
    /// `tx_size`); `None` keeps the kernel's 32. Ignored where the kernel lacks the option.
    pub tx_budget: Option<u32>,
    /// Refill a fill ring once at least this many slots are free.
    pub refill_batch: u32,
    /// Interfaces that may be added to a running worker ([`crate::io::Worker::port_opener`]):
    /// the UMEM holds `hot_frames_per_port` more frames for each, allocated at start.
    pub hot_ports: u32,
    /// UMEM chunks reserved per hot-added port; such a port keeps at most half of them in its
    /// fill ring, so the others' share is never taken.
    pub hot_frames_per_port: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 4096,
            frame_headroom: DEFAULT_HEADROOM as u32,
            frames_per_port: 8192,
            fill_size: 4096,
            comp_size: 4096,
            rx_size: 2048,
            tx_size: 2048,
            mode: BindMode::Auto,
            tx_budget: Some(256),
            refill_batch: 32,
            hot_ports: 0,
            hot_frames_per_port: 2048,
        }
    }
}
