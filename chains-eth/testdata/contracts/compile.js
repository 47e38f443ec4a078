// Compiles every .sol file in this folder with solc-js (standard JSON,
// optimizer on, 200 runs, imports resolved from node_modules) and writes
// <out>/<Contract>.bin (creation bytecode, hex) and <Contract>.abi.json.
// Usage: node compile.js <node_modules dir> <out dir>
const fs = require("fs");
const path = require("path");
const [modules, out] = process.argv.slice(2);
const solc = require(path.join(modules, "solc"));
const here = __dirname;
const sources = {};
for (const f of fs.readdirSync(here).filter((f) => f.endsWith(".sol")).sort()) {
  sources[f] = { content: fs.readFileSync(path.join(here, f), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const findImports = (p) => {
  const file = path.join(modules, p);
  return fs.existsSync(file) ? { contents: fs.readFileSync(file, "utf8") } : { error: `not found: ${p}` };
};
const result = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (result.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
fs.mkdirSync(out, { recursive: true });
for (const file of Object.keys(sources)) {
  for (const [name, c] of Object.entries(result.contracts[file])) {
    fs.writeFileSync(path.join(out, `${name}.bin`), c.evm.bytecode.object);
    fs.writeFileSync(path.join(out, `${name}.abi.json`), JSON.stringify(c.abi));
  }
}
console.log(`compiled ${Object.keys(sources).length} files with solc ${solc.version()} into ${out}`);
