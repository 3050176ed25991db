// Sluice auth policy in JavaScript (componentize-js), world
// `authorizer-policy`: every request must carry a team header whose value is
// on an allow list; each team gets a requests-per-minute budget in the host's
// windowed counters; the team becomes a label on the usage record.
//
// Config (`team-header.toml`, handed to `init` as JSON):
//   header = "x-team"        # which request header names the team
//   teams = ["blue", "red"]  # allowed teams
//   rpm_per_team = 600       # optional
import { counterAdd, log } from "sluice:policy/host@1.2.0";

const settings = { header: "x-team", teams: [], rpm_per_team: undefined };

export const lifecycle = {
  init(config) {
    const given = JSON.parse(config);
    const unknown = Object.keys(given).filter((k) => !(k in settings));
    if (unknown.length > 0) throw `team-header config: unknown field(s) ${unknown.join(", ")}`;
    Object.assign(settings, given);
    if (settings.teams.length === 0) throw "team-header config: `teams` must not be empty";
    log("info", `team-header: ${settings.teams.length} teams allowed via ${settings.header}`);
  },
};

const deny = (status, code, message, retryAfterS) => ({
  tag: "deny",
  val: { status, code, message, retryAfterS },
});

export const authorizer = {
  authorize(req, _key) {
    const team = req.header(settings.header);
    if (team === undefined || !settings.teams.includes(team)) {
      return deny(403, "team_not_allowed", `Send a ${settings.header} header naming an allowed team.`);
    }
    const limit = settings.rpm_per_team;
    if (limit !== undefined) {
      const window = counterAdd(`team-rpm:${team}`, 1n, 60000);
      if (window.total > BigInt(limit)) {
        const retry = Math.max(1, Math.ceil(window.resetsInMs / 1000));
        return deny(429, "rate_limit_exceeded", `Team ${team} reached ${limit} requests per minute.`, retry);
      }
    }
    return { tag: "allow", val: [{ name: "team", value: team }] };
  },
};
