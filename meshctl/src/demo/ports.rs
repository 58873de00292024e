//! Free loopback ports for the processes of a plan.

use std::net::Ipv4Addr;

/// Hands out free loopback ports below the kernel's ephemeral range
/// (32768 and up on Linux), where outgoing connections take their source
/// ports: a port picked by binding port 0 and released can be taken by a
/// connection before the process it was meant for binds it.
#[derive(Debug)]
pub struct PortAllocator {
    next: u16,
    end: u16,
}

impl PortAllocator {
    /// Ports of the block `[20000 + 500 * (seed % 24), +500)`: processes
    /// with different seeds (e.g. pids) stay out of each other's way.
    pub fn new(seed: u32) -> Self {
        let start = 20_000 + 500 * (seed % 24) as u16;
        Self {
            next: start,
            end: start + 500,
        }
    }

    /// The next port of the block that nothing listens on now.
    pub fn next_port(&mut self) -> u16 {
        while self.next < self.end {
            let port = self.next;
            self.next += 1;
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
        panic!("no free port left in this allocator's block");
    }
}
