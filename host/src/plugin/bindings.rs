//! Host bindings generated from `wit/`, one module per world. The shared `types` interface is
//! generated once (in [`template`]) and reused by the other worlds.

#![allow(missing_docs)]

/// The `prompt-template` world.
pub mod template {
    wasmtime::component::bindgen!({ path: "../wit", world: "prompt-template" });
}

/// The `cleaner` world.
pub mod cleaner {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "cleaner",
        with: { "kiln:stages/types": super::template::kiln::stages::types },
    });
}

/// The `qc-rule` world.
pub mod qc {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "qc-rule",
        with: { "kiln:stages/types": super::template::kiln::stages::types },
    });
}

/// The `critic` world.
pub mod critic {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "critic",
        with: { "kiln:stages/types": super::template::kiln::stages::types },
    });
}

pub use template::kiln::stages::types as wit;
