// Validate an AsyncAPI document with the official parser.
//
//   node validate.mjs [document.json|-]     (stdin when no path or "-")
//
// Prints one JSON line per diagnostic ({"severity", "code", "message", "path"}) and a summary
// line on stderr. Exit code: 0 when no diagnostic has severity "error", 1 when one does,
// 2 when the input cannot be read.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "info", "hint"];

async function readInput(arg) {
  if (arg && arg !== "-") return readFile(arg, "utf8");
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function main() {
  let text;
  try {
    text = await readInput(process.argv[2]);
  } catch (err) {
    console.error(`cannot read input: ${err.message}`);
    return 2;
  }
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text);
  let errors = 0;
  for (const d of diagnostics) {
    const severity = SEVERITY[d.severity] ?? String(d.severity);
    if (d.severity === 0) errors += 1;
    console.log(JSON.stringify({ severity, code: d.code, message: d.message, path: d.path }));
  }
  console.error(
    `${errors} error(s), ${diagnostics.length - errors} other diagnostic(s)` +
      (document ? "" : "; no document"),
  );
  return errors > 0 || !document ? 1 : 0;
}

process.exitCode = await main();
