// Validates CiliumNetworkPolicy documents against Cilium's CRD schema, offline: reads a JSON
// array of documents on stdin, prints each problem, exits 1 if there is one. The schema
// comes from the npm package @kubernetes-models/cilium, which scripts/test.sh installs into
// .tools/node (MODELS names its node_modules).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.MODELS ?? join(process.cwd(), ".tools/node/node_modules");
const { CiliumNetworkPolicy } = await import(
  pathToFileURL(join(modules, "@kubernetes-models/cilium/cilium.io/v2/CiliumNetworkPolicy.js")).href
);
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
docs.forEach((doc, i) => {
  if (doc.kind !== "CiliumNetworkPolicy") {
    console.log(`document ${i}: kind ${doc.kind} is not CiliumNetworkPolicy`);
    failed++;
    return;
  }
  try {
    new CiliumNetworkPolicy(doc).validate();
  } catch (e) {
    console.log(`document ${i} (${doc.metadata?.name}): ${e.message}`);
    failed++;
  }
});
process.exit(failed ? 1 : 0);
