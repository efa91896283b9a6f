//! Edge cases as raw XML streams.
