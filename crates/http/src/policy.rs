//! What one listener allows: how many connections, from one address and in all, how large and
//! how slow a request's head may be, how long a connection may idle, how large a body may be,
//! and how long shutdown waits for open requests.

use std::time::Duration;

/// The limits of one listener. Every listener has its own; the constructors give each kind of
/// listener its defaults.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Name of the listener in logs and metrics (`s3`, `admin`, `peer`, `web`).
    pub name: &'static str,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections served at once from one IP address; more are refused at once (HTTP 503 on a
    /// plain listener, a closed connection on a TLS one), so one client cannot take every slot.
    pub max_connections_per_address: usize,
    /// Most header fields in a request (HTTP/1.1; more gets 431).
    pub max_headers: usize,
    /// Most bytes in a request's head (request line and headers; more gets 431).
    pub max_header_bytes: usize,
    /// Time allowed to send a request's head (and to finish a TLS handshake) while the listener
    /// has connections to spare.
    pub header_read_timeout: Duration,
    /// The header read time once connections run short: the time shrinks linearly from
    /// [`Policy::header_read_timeout`] at half the connection limit down to this at the limit,
    /// so slow or stalled clients give their slots back quickly under pressure.
    pub min_header_read_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request body, in bytes (a larger `Content-Length` gets 413 before the body is
    /// read; a body that grows past it is cut off).
    pub max_body_bytes: u64,
    /// Concurrent HTTP/2 streams on one connection.
    pub max_concurrent_streams: u32,
    /// How long a graceful shutdown waits for open requests before closing their connections.
    pub drain_deadline: Duration,
    /// Header carrying the request id on every response.
    pub request_id_header: &'static str,
}

/// The largest S3 PUT or part is 5 GiB; `aws-chunked` framing adds up to ~1.5% on top.
const S3_MAX_BODY: u64 = (5 << 30) + (128 << 20);

impl Policy {
    /// The S3/KV listener: many clients, bodies up to S3's 5 GiB object size.
    pub fn s3() -> Policy {
        Policy {
            name: "s3",
            max_connections: 4096,
            max_connections_per_address: 512,
            max_headers: 100,
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            min_header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(120),
            max_body_bytes: S3_MAX_BODY,
            max_concurrent_streams: 256,
            drain_deadline: Duration::from_secs(30),
            request_id_header: "x-amz-request-id",
        }
    }

    /// The admin API: few operators, small JSON bodies.
    pub fn admin() -> Policy {
        Policy {
            name: "admin",
            max_connections: 256,
            max_connections_per_address: 64,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            header_read_timeout: Duration::from_secs(10),
            min_header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 64 << 10,
            max_concurrent_streams: 64,
            drain_deadline: Duration::from_secs(10),
            request_id_header: "x-request-id",
        }
    }

    /// The web edge: many browsers, each opening a few connections; GET and HEAD only, so no
    /// request bodies.
    pub fn web() -> Policy {
        Policy {
            name: "web",
            max_connections: 4096,
            max_connections_per_address: 256,
            max_headers: 100,
            max_header_bytes: 32 << 10,
            header_read_timeout: Duration::from_secs(20),
            min_header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(75),
            // Request bodies go only to origin apps (uploads, replayed writes); the edge keeps
            // them for a replay up to the same bound.
            max_body_bytes: 5 << 30,
            max_concurrent_streams: 256,
            drain_deadline: Duration::from_secs(30),
            request_id_header: "x-request-id",
        }
    }

    /// Node-to-node traffic: a few peers with pooled connections; request bodies are blob
    /// copies, up to an object's largest size.
    pub fn peer() -> Policy {
        Policy {
            name: "peer",
            max_connections: 1024,
            max_connections_per_address: 256,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            header_read_timeout: Duration::from_secs(10),
            min_header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(120),
            max_body_bytes: S3_MAX_BODY,
            max_concurrent_streams: 256,
            drain_deadline: Duration::from_secs(30),
            request_id_header: "x-request-id",
        }
    }

    /// The header read time for a new connection when `in_use` of the listener's connections
    /// are taken: the full time up to half the limit, then shrinking linearly to the minimum.
    pub fn header_read_timeout_at(&self, in_use: usize) -> Duration {
        let half = self.max_connections / 2;
        if in_use <= half || self.max_connections <= half {
            return self.header_read_timeout;
        }
        let pressure = (in_use - half) as f64 / (self.max_connections - half) as f64;
        let full = self.header_read_timeout.as_secs_f64();
        let min = self.min_header_read_timeout.as_secs_f64().min(full);
        Duration::from_secs_f64(full - (full - min) * pressure.min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_time_shrinks_only_past_half_the_limit() {
        let p = Policy { max_connections: 100, ..Policy::s3() };
        assert_eq!(p.header_read_timeout_at(0), Duration::from_secs(30));
        assert_eq!(p.header_read_timeout_at(50), Duration::from_secs(30));
        assert_eq!(p.header_read_timeout_at(75), Duration::from_secs(16));
        assert_eq!(p.header_read_timeout_at(100), Duration::from_secs(2));
        assert_eq!(p.header_read_timeout_at(1000), Duration::from_secs(2));
    }
}
