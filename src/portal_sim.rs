//! `bsk-sidecar portal-sim`: a stand-in BSK portal for a department to develop against.
