let config = {};

function pluginError(code, message) {
  // A thrown value becomes the call's plugin-error.
  return { code, message, recordIds: [] };
}
