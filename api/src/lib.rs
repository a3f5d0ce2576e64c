//! kmm-api: placeholder replaced below.
