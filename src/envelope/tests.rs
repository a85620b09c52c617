//! Unit tests for the envelope layers.
