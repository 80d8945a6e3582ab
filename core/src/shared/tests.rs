//! Tests of shared and counted locks.
