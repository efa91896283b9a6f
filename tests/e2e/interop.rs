//! A client program from outside the Rust ecosystem.
