// Sluice router in JavaScript (componentize-js), world `planner-policy`
// (WIT 1.2): a request's tenant header picks the healthy channels tagged with
// the tenant's name, highest priority first, then the healthy channels tagged
// `shared`; a tenant with neither is refused with 403 `tenant_has_no_channel`.
// Channel tags come from the gateway's config (`tags = ["acme", "shared"]`).
//
// Config (`tenant-router.toml`, handed to `init` as JSON):
//   header = "x-tenant"      # which request header names the tenant
//   shared_tag = "shared"    # channels any tenant may use after its own
import { hasTag } from "sluice:policy/candidates@1.2.0";

const settings = { header: undefined, shared_tag: "shared" };

export const lifecycle = {
  init(config) {
    const given = JSON.parse(config);
    const unknown = Object.keys(given).filter((k) => !(k in settings));
    if (unknown.length > 0) throw `tenant-router config: unknown field(s) ${unknown.join(", ")}`;
    Object.assign(settings, given);
    if (typeof settings.header !== "string") throw "tenant-router config: missing field `header`";
  },
};

// The positions of the healthy candidates carrying `tag`, highest priority first.
const tagged = (candidates, tag) =>
  candidates
    .map((candidate, position) => ({ candidate, position }))
    .filter(({ candidate, position }) => candidate.healthy && hasTag(position, tag))
    .sort((a, b) => b.candidate.priority - a.candidate.priority)
    .map(({ position }) => position);

export const planner = {
  plan(req, candidates) {
    const tenant = req.header(settings.header) ?? "";
    const plan = [...(tenant ? tagged(candidates, tenant) : []), ...tagged(candidates, settings.shared_tag)];
    if (plan.length === 0) {
      throw {
        status: 403,
        code: "tenant_has_no_channel",
        message: `No channel serves tenant '${tenant}' (send it in ${settings.header}).`,
        retryAfterS: undefined,
      };
    }
    return plan.map((candidate) => ({ candidate, model: undefined }));
  },
};
