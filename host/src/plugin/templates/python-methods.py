    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="{{name}}", version="0.1.0", wit_version="{{wit_version}}")

    def configure(self, config: str) -> None:
        """`config` is the plugin's table from the kiln config, as JSON ("{}" when there is none)."""
        global CONFIG
        try:
            CONFIG = json.loads(config or "{}")
        except ValueError as e:
            raise Err(types.PluginError(code="bad-config", message=f"{{name}} config: {e}", record_ids=[]))
