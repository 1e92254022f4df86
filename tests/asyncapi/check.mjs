// Parses AsyncAPI documents with the AsyncAPI project's own parser and prints, as one JSON
// array, what it made of each: tests/test_contract.py reads it. One node process for all
// the documents of a test run: loading the parser is most of the cost.
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Parser, fromFile } from "@asyncapi/parser";

const parser = new Parser();
const reports = [];
for (const arg of process.argv.slice(2)) {
  const path = resolve(arg);
  // The file's own URL as the source: its relative $refs (./schemas/...) resolve beside it.
  const { document, diagnostics } = await fromFile(parser, path).parse({
    source: pathToFileURL(path).href,
  });
  const report = {
    path: arg,
    parsed: document !== undefined,
    diagnostics: diagnostics.map((d) => ({
      // Spectral's severities: 0 error, 1 warning, 2 information, 3 hint.
      severity: d.severity,
      code: d.code,
      message: d.message,
      path: d.path.join("."),
    })),
  };
  if (document !== undefined) {
    report.version = document.version();
    report.channels = document.channels().all().map((channel) => ({
      id: channel.id(),
      address: channel.address(),
      messages: channel.messages().all().map((message) => message.id()),
    }));
    report.operations = document.operations().all().map((operation) => ({
      id: operation.id(),
      action: operation.action(),
      channels: operation.channels().all().map((channel) => channel.id()),
    }));
  }
  reports.push(report);
}
console.log(JSON.stringify(reports));
