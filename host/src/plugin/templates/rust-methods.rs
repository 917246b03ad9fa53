    fn info() -> PluginInfo {
        PluginInfo { name: "{{name}}".into(), version: env!("CARGO_PKG_VERSION").into(), wit_version: "{{wit_version}}".into() }
    }

    /// `config` is the plugin's table from the kiln config, as JSON ("{}" when there is none).
    fn configure(_config: String) -> Result<(), PluginError> {
        Ok(())
    }
