import { runService } from "@voicebot/service-kit";
import { definition } from "./service.js";

await runService(definition);
