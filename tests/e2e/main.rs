//! End-to-end tests: the real server in-process, driven by a real XMPP client library
//! (tokio-xmpp) for normal paths, raw XML streams for edge cases, and a client program from
//! outside the Rust ecosystem for interoperability.

mod admin_http;
mod archive;
mod cli;
mod client;
mod directory_features;
mod interop;
mod ldap;
mod mam;
mod raw;
