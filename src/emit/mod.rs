//! The client side of events (batching, retries, disk spool, the worker's local endpoint).
//! Empty until `scientist emit` lands (issue 4); events are built with `event::Event` today.
