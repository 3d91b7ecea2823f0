// Chinese (default) and English strings, and time formatting in the configured zone.
const zh = {
  username: "用户名", password: "口令 (API 令牌)", login: "登录", logout: "退出", bad_login: "用户名或口令错误",
  nav_board: "告警", nav_map: "地图", nav_devices: "设备", nav_duty: "值班", nav_figures: "统计", nav_silences: "静默与维护",
  nav_audit: "审计",
  live_on: "实时连接正常", live_off: "实时连接中断, 正在重连…", sound_on: "声音提示: 开", sound_off: "声音提示: 关",
  sound_blocked: "点击页面任意处以启用声音",
  sev_critical: "紧急", sev_major: "重要", sev_warning: "一般", sev_info: "提示",
  st_firing: "未确认", st_acknowledged: "处理中", st_resolved: "已关闭",
  tab_open: "未关闭", tab_firing: "未确认", tab_acknowledged: "处理中", tab_resolved: "已关闭", tab_all: "全部",
  all: "全部", industry: "行业", site: "站点", severity: "级别", status: "状态", unit: "责任单位", kind: "设备类型",
  device: "设备", search: "搜索 (摘要/设备/编号)", sort: "排序", sort_newest: "最新优先", sort_oldest: "最早优先",
  sort_severity: "级别优先", sort_deadline: "时限优先",
  started: "发生时间", summary: "告警内容", assignee: "处理人", deadline: "时限", actions: "操作",
  work_order: "工单", wo_open_page: "在工单页处理",
  wo_figures: "工单（按网格）", wo_grid: "网格", wo_response: "平均响应", wo_arrival: "平均到场", wo_on_time_accept: "接单及时率",
  wo_on_time_on_site: "到场及时率", wo_on_time_closed: "办结及时率", wo_satisfaction: "满意率",
  ack: "确认", assign: "指派", comment: "备注", resolve: "关闭", silence: "静默", detail: "详情",
  driver_text: "发短信给司机",
  prev: "上一页", next: "下一页", of: "共", rows: "条",
  banner_critical: "紧急告警待确认", banner_more: "另有 {n} 条",
  overdue: "已超时", due_in: "剩余", ack_by: "确认时限", resolve_by: "办结时限",
  note: "说明", reason: "关闭原因 (必填)", text: "备注内容", person: "人员", duration: "时长", minutes: "分钟",
  scope: "范围", scope_rule_device: "本设备的同类告警", scope_device: "本设备全部告警", scope_rule: "所有设备的同类告警",
  ok: "确定", cancel: "取消", saved: "已保存", failed: "操作失败",
  timeline: "处理过程", notifications: "通知记录", evidence: "现场快照", chart: "设备数据曲线", place: "位置",
  rule: "触发规则", why: "触发原因 (越限数值)", labels: "标签", values_at_alert: "告警时设备状态",
  no_snapshot: "无图片快照", no_data: "暂无数据", recipient: "接收人", channel: "渠道", outcome: "结果", attempts: "尝试",
  act_created: "告警产生", act_acknowledged: "已确认", act_assigned: "已指派", act_commented: "备注", act_closed: "已关闭",
  act_resolved: "已恢复", act_reopened: "再次触发", act_escalated: "升级通知", act_severity_changed: "级别变更",
  act_ack_overdue: "确认超时", act_resolve_overdue: "办结超时", notified: "通知",
  act_wo_created: "立案", act_wo_dispatched: "派单", act_wo_dispatch: "派单", act_wo_reassign: "改派", act_wo_accept: "接单",
  act_wo_depart: "出发", act_wo_arrive: "到场", act_wo_handle: "处置", act_wo_photo: "现场照片", act_wo_verify: "核查",
  act_wo_close: "办结", act_wo_return: "退单", act_wo_comment: "工单备注", act_wo_overdue: "工单超时", act_wo_satisfaction: "回访",
  wo_new: "待派单", wo_dispatched: "已派单", wo_accepted: "已接单", wo_en_route: "已出发", wo_on_site: "已到场",
  wo_handled: "待核查", wo_verified: "已核查", wo_closed: "已办结", wo_returned: "已退单",
  n_sent: "已送达", n_dead: "失败", n_pending: "待发送", n_sending: "发送中", n_digested: "已合并",
  devices_total: "设备总数", online: "在线", offline: "离线", last_seen: "最后上报", values: "当前数据",
  kind_elevator: "电梯", kind_vehicle: "车辆", kind_emission: "排放", kind_camera: "摄像机", kind_sensor: "安全监测", kind_vigil: "平台自检",
  open_alerts: "未关闭告警", history: "历史告警", window: "时间范围", metric: "指标",
  on_duty_now: "当前值班", rosters: "排班表", upcoming: "后续班次", overrides: "临时替班", escalations: "升级中的告警",
  add_override: "添加替班", roster: "排班", from: "开始", to: "结束", role: "岗位", members: "成员", step: "步骤",
  no_permission: "无权限",
  today: "今日", period: "统计周期", days: "天", total: "告警总数", closed: "已办结", closure_rate: "办结率",
  on_time_rate: "按时办结率", mtta: "平均确认时长", mttr: "平均办结时长", by_industry: "按行业", by_site: "按站点",
  by_unit: "按责任单位", daily: "每日告警数",
  silences: "静默规则", maintenance: "维护窗口", create_silence: "新建静默", matchers: "匹配条件 (每行一条, 如 site=cuiyuan-3)",
  active: "生效中", scheduled: "未开始", expire: "立即失效", author: "创建人", ends: "结束时间", comment_col: "说明",
  weekdays: "星期", start: "开始", layers: "图层", sites: "站点", tracks: "轨迹", geofences: "电子围栏", routes: "线路",
  alerts_layer: "告警", devices_layer: "设备", fit: "全图",
  audit: "操作审计", time: "时间", user: "用户", action: "操作", target: "对象", result: "结果",
  confirm_resolve: "关闭告警", new_alert: "新告警", state_changed: "告警状态已更新",
  starts_in: "多少分钟后开始 (0 为立即; 维护窗口可预约)",
  // Enum and key labels: every value the platform sends is shown through one of these (tests/unit/console/test_i18n.py).
  act_wo_reopened: "工单重开",
  ind_elevator: "电梯运行", ind_emission: "污染排放", ind_vehicles: "两客一危", ind_vehicle: "两客一危", ind_safety: "安全生产",
  ind_campus: "校园秩序", ind_hazmat: "危爆物品", ind_vigil: "平台自检", unassigned: "未归类",
  role_operator: "值班员", role_supervisor: "值班长", role_admin: "管理员", role_grid_staff: "网格员",
  role_shift_lead: "值班长", role_duty_chief: "值班主任", role_unit_head: "单位负责人",
  mute_silence: "静默", mute_maintenance: "维护窗口", mute_inhibition: "抑制", muted: "已静默 (不通知)",
  nk_firing: "告警", nk_resolved: "恢复", nk_repeat: "重复提醒", nk_escalation: "升级", nk_overdue: "超时提醒",
  nk_digest: "汇总", nk_workorder: "工单",
  ch_telemetry: "遥测数据", ch_event: "事件", ch_status: "在线状态", ch_command: "指令",
  nch_mailto: "邮件", nch_mailtos: "邮件", nch_wecombot: "企业微信", nch_dingtalk: "钉钉", nch_feishu: "飞书", nch_lark: "飞书",
  nch_json: "Webhook", nch_jsons: "Webhook", nch_form: "Webhook", nch_forms: "Webhook", nch_sms: "短信",
  rej_too_large: "报文过大", rej_not_utf8: "非 UTF-8 编码", rej_malformed_json: "JSON 格式错误", rej_schema: "字段不符合约定",
  rej_unknown_kind: "未知设备类型", rej_bad_topic: "主题错误", rej_unsupported_version: "不支持的协议版本",
  rej_unknown_device: "未登记设备",
  src_memory: "实时缓存", src_storage: "历史库",
  cat_accident: "事故", cat_alarm_management: "报警管理", cat_availability: "可用性", cat_crowd: "人员聚集", cat_data_quality: "数据质量",
  cat_device_health: "设备健康", cat_device_tamper: "设备遭破坏", cat_early_warning: "预警", cat_emergency: "紧急求助",
  cat_exceedance: "超标", cat_fatigue: "疲劳驾驶", cat_fault: "故障", cat_gas: "气体泄漏", cat_geofence: "电子围栏",
  cat_interlock: "联锁", cat_intrusion: "入侵", cat_loitering: "徘徊", cat_maintenance: "维保", cat_power: "供电",
  cat_process: "工艺", cat_rescue: "救援", cat_schedule: "运营时段", cat_security: "安防", cat_speeding: "超速",
  cat_stop: "停车", cat_store: "仓储", cat_tampering: "数据篡改", cat_tank: "储罐", cat_treatment: "治理设施",
  cat_unsafe_movement: "危险运行", category: "类别",
  wd_0: "周一", wd_1: "周二", wd_2: "周三", wd_3: "周四", wd_4: "周五", wd_5: "周六", wd_6: "周日",
  aud_login: "登录", aud_logout: "退出", aud_post_api_alerts_id_action: "告警操作", aud_post_api_silences: "新建静默",
  aud_delete_api_silences_id: "解除静默", aud_post_api_maintenance: "新建维护窗口", aud_delete_api_maintenance_id: "删除维护窗口",
  aud_post_api_duty_overrides: "添加替班", aud_delete_api_duty_overrides_id: "删除替班", aud_post_api_wo: "网格员上报工单",
  aud_post_api_wo_id_photos: "上传现场照片", aud_post_api_wo_id_action: "工单操作",
  create_maintenance: "新建维护窗口", maint_name: "名称", end: "结束", timezone: "时区", until: "截止日期 (可选)",
  until_col: "截止", no_end: "长期", delete: "删除", open_now: "进行中", not_open: "未到时间", source_config: "配置文件",
  maint_site: "站点", maint_device: "设备编号 (可选)", maint_kind: "设备类型 (可选)", maint_more: "其他匹配条件 (每行一条, 可选)",
  maint_days: "每周哪几天", maint_need: "请至少选择站点、设备或设备类型之一, 并至少选择一天", confirm_delete: "确认删除?",
  source: "来源",
  every_day: "每天",
  q_N: "正常", q_F: "停运", q_M: "维护", q_S: "手工录入", q_D: "仪器故障", q_C: "校准", q_T: "超量程", q_B: "通讯异常",
  q_good: "正常", q_bad: "无效", q_uncertain: "可疑",
  by_kind: "按设备类型", by_severity: "按级别",
  dk_reason: "原因", dk_from: "由", dk_to: "改为", dk_after_s: "间隔 (秒)", dk_severity: "级别", dk_note: "说明", dk_assignee: "处理人",
  dk_unit: "单位", dk_text: "内容", dk_step: "第几步", dk_repeat: "重复", dk_muted: "静默中", dk_grid: "网格", dk_milestone: "节点",
  dk_source: "来源", dk_reopens: "重开次数", dk_category: "类别", dk_place: "地点", dk_photo: "照片", dk_result: "结果",
  yes: "是", no: "否", actor_rule: "规则引擎", actor_system: "系统", rule_cleared: "规则条件已解除",
};
const en = {
  username: "User name", password: "Password (API token)", login: "Log in", logout: "Log out", bad_login: "Wrong user name or password",
  nav_board: "Alerts", nav_map: "Map", nav_devices: "Devices", nav_duty: "Duty", nav_figures: "Figures", nav_silences: "Silences & maintenance",
  nav_audit: "Audit",
  live_on: "Live", live_off: "Live connection lost, reconnecting…", sound_on: "Sound: on", sound_off: "Sound: off",
  sound_blocked: "Click anywhere to enable sound",
  sev_critical: "Critical", sev_major: "Major", sev_warning: "Warning", sev_info: "Info",
  st_firing: "Firing", st_acknowledged: "Acknowledged", st_resolved: "Resolved",
  tab_open: "Open", tab_firing: "Firing", tab_acknowledged: "Acknowledged", tab_resolved: "Resolved", tab_all: "All",
  all: "All", industry: "Industry", site: "Site", severity: "Severity", status: "Status", unit: "Unit", kind: "Kind",
  device: "Device", search: "Search (summary/device/id)", sort: "Sort", sort_newest: "Newest", sort_oldest: "Oldest",
  sort_severity: "Severity", sort_deadline: "Deadline",
  started: "Started", summary: "Summary", assignee: "Handler", deadline: "Deadline", actions: "Actions",
  work_order: "Work order", wo_open_page: "handle on the work-order page",
  wo_figures: "Work orders by grid", wo_grid: "Grid", wo_response: "Mean response", wo_arrival: "Mean arrival",
  wo_on_time_accept: "Accepted on time", wo_on_time_on_site: "On site on time", wo_on_time_closed: "Closed on time",
  wo_satisfaction: "Satisfaction",
  ack: "Ack", assign: "Assign", comment: "Comment", resolve: "Resolve", silence: "Silence", detail: "Detail",
  driver_text: "Text driver",
  prev: "Previous", next: "Next", of: "of", rows: "",
  banner_critical: "Critical alert awaiting acknowledgement", banner_more: "{n} more",
  overdue: "overdue", due_in: "due in", ack_by: "Acknowledge by", resolve_by: "Resolve by",
  note: "Note", reason: "Reason (required)", text: "Comment", person: "Person", duration: "Duration", minutes: "min",
  scope: "Scope", scope_rule_device: "This rule on this device", scope_device: "Everything from this device", scope_rule: "This rule on all devices",
  ok: "OK", cancel: "Cancel", saved: "Saved", failed: "Failed",
  timeline: "Timeline", notifications: "Notifications", evidence: "Evidence snapshot", chart: "Device telemetry", place: "Location",
  rule: "Rule", why: "Why (values that crossed)", labels: "Labels", values_at_alert: "Device state when raised",
  no_snapshot: "No image", no_data: "No data", recipient: "Recipient", channel: "Channel", outcome: "Outcome", attempts: "Attempts",
  act_created: "Raised", act_acknowledged: "Acknowledged", act_assigned: "Assigned", act_commented: "Comment", act_closed: "Closed",
  act_resolved: "Recovered", act_reopened: "Re-fired", act_escalated: "Escalated", act_severity_changed: "Severity changed",
  act_ack_overdue: "Acknowledge overdue", act_resolve_overdue: "Resolve overdue", notified: "Notified",
  act_wo_created: "Case opened", act_wo_dispatched: "Dispatched", act_wo_dispatch: "Dispatched", act_wo_reassign: "Reassigned",
  act_wo_accept: "Accepted", act_wo_depart: "On the way", act_wo_arrive: "On site", act_wo_handle: "Handled",
  act_wo_photo: "Site photo", act_wo_verify: "Verified", act_wo_close: "Closed (work order)", act_wo_return: "Returned",
  act_wo_comment: "Work-order note", act_wo_overdue: "Work order overdue", act_wo_satisfaction: "Follow-up",
  wo_new: "to dispatch", wo_dispatched: "dispatched", wo_accepted: "accepted", wo_en_route: "on the way",
  wo_on_site: "on site", wo_handled: "to verify", wo_verified: "verified", wo_closed: "closed", wo_returned: "returned",
  n_sent: "delivered", n_dead: "failed", n_pending: "pending", n_sending: "sending", n_digested: "digested",
  devices_total: "Devices", online: "Online", offline: "Offline", last_seen: "Last seen", values: "Current values",
  kind_elevator: "Elevator", kind_vehicle: "Vehicle", kind_emission: "Emission", kind_camera: "Camera", kind_sensor: "Safety sensor", kind_vigil: "Vigil platform",
  open_alerts: "Open alerts", history: "Alert history", window: "Window", metric: "Metric",
  on_duty_now: "On duty now", rosters: "Rosters", upcoming: "Next shifts", overrides: "Cover", escalations: "Escalations in progress",
  add_override: "Add cover", roster: "Roster", from: "From", to: "To", role: "Role", members: "Members", step: "Step",
  no_permission: "Not permitted",
  today: "Today", period: "Period", days: "days", total: "Alerts", closed: "Closed", closure_rate: "Closure rate",
  on_time_rate: "On-time rate", mtta: "Mean time to acknowledge", mttr: "Mean time to resolve", by_industry: "By industry", by_site: "By site",
  by_unit: "By unit", daily: "Alerts per day",
  silences: "Silences", maintenance: "Maintenance windows", create_silence: "New silence", matchers: "Matchers (one per line, e.g. site=cuiyuan-3)",
  active: "active", scheduled: "scheduled", expire: "Expire now", author: "Author", ends: "Ends", comment_col: "Comment",
  weekdays: "Weekdays", start: "Start", layers: "Layers", sites: "Sites", tracks: "Tracks", geofences: "Geofences", routes: "Routes",
  alerts_layer: "Alerts", devices_layer: "Devices", fit: "Fit",
  audit: "Audit", time: "Time", user: "User", action: "Action", target: "Target", result: "Result",
  confirm_resolve: "Resolve alert", new_alert: "New alert", state_changed: "Alert updated",
  starts_in: "Starts in minutes (0 = now; schedule maintenance ahead)",
  // Enum and key labels (see the zh table).
  act_wo_reopened: "Work order reopened",
  ind_elevator: "Elevators", ind_emission: "Pollution emission", ind_vehicles: "Buses & hazmat trucks", ind_vehicle: "Buses & hazmat trucks",
  ind_safety: "Safety production", ind_campus: "Campus order", ind_hazmat: "Hazardous goods", ind_vigil: "Platform self-check",
  unassigned: "Unassigned",
  role_operator: "Operator", role_supervisor: "Supervisor", role_admin: "Administrator", role_grid_staff: "Grid staff",
  role_shift_lead: "Shift lead", role_duty_chief: "Duty chief", role_unit_head: "Unit head",
  mute_silence: "Silence", mute_maintenance: "Maintenance window", mute_inhibition: "Inhibited", muted: "Muted (not notified)",
  nk_firing: "alert", nk_resolved: "recovery", nk_repeat: "repeat", nk_escalation: "escalation", nk_overdue: "overdue reminder",
  nk_digest: "digest", nk_workorder: "work order",
  ch_telemetry: "Telemetry", ch_event: "Event", ch_status: "Status", ch_command: "Command",
  nch_mailto: "Email", nch_mailtos: "Email", nch_wecombot: "WeCom", nch_dingtalk: "DingTalk", nch_feishu: "Feishu", nch_lark: "Lark",
  nch_json: "Webhook", nch_jsons: "Webhook", nch_form: "Webhook", nch_forms: "Webhook", nch_sms: "SMS",
  rej_too_large: "Too large", rej_not_utf8: "Not UTF-8", rej_malformed_json: "Malformed JSON", rej_schema: "Schema mismatch",
  rej_unknown_kind: "Unknown device kind", rej_bad_topic: "Bad topic", rej_unsupported_version: "Unsupported version",
  rej_unknown_device: "Unknown device",
  src_memory: "live buffer", src_storage: "history store",
  cat_accident: "Accident", cat_alarm_management: "Alarm management", cat_availability: "Availability", cat_crowd: "Crowding",
  cat_data_quality: "Data quality", cat_device_health: "Device health", cat_device_tamper: "Device tampering",
  cat_early_warning: "Early warning", cat_emergency: "Emergency", cat_exceedance: "Exceedance", cat_fatigue: "Fatigue driving",
  cat_fault: "Fault", cat_gas: "Gas leak", cat_geofence: "Geofence", cat_interlock: "Interlock", cat_intrusion: "Intrusion",
  cat_loitering: "Loitering", cat_maintenance: "Maintenance", cat_power: "Power", cat_process: "Process", cat_rescue: "Rescue",
  cat_schedule: "Operating hours", cat_security: "Security", cat_speeding: "Speeding", cat_stop: "Stopping", cat_store: "Storage",
  cat_tampering: "Data tampering", cat_tank: "Tank", cat_treatment: "Treatment plant", cat_unsafe_movement: "Unsafe movement",
  category: "Category",
  wd_0: "Mon", wd_1: "Tue", wd_2: "Wed", wd_3: "Thu", wd_4: "Fri", wd_5: "Sat", wd_6: "Sun",
  aud_login: "Log in", aud_logout: "Log out", aud_post_api_alerts_id_action: "Alert action", aud_post_api_silences: "New silence",
  aud_delete_api_silences_id: "Expire silence", aud_post_api_maintenance: "New maintenance window",
  aud_delete_api_maintenance_id: "Delete maintenance window", aud_post_api_duty_overrides: "Add cover",
  aud_delete_api_duty_overrides_id: "Remove cover", aud_post_api_wo: "Report work order", aud_post_api_wo_id_photos: "Upload site photo",
  aud_post_api_wo_id_action: "Work-order action",
  create_maintenance: "New maintenance window", maint_name: "Name", end: "End", timezone: "Time zone", until: "Until date (optional)",
  until_col: "Until", no_end: "no end", delete: "Delete", open_now: "open now", not_open: "not now", source_config: "config file",
  maint_site: "Site", maint_device: "Device id (optional)", maint_kind: "Device kind (optional)",
  maint_more: "More matchers (one per line, optional)", maint_days: "Days of the week",
  maint_need: "Choose a site, a device or a kind, and at least one day", confirm_delete: "Delete?",
  source: "Source",
  every_day: "every day",
  q_N: "normal", q_F: "stopped", q_M: "maintenance", q_S: "manual", q_D: "instrument fault", q_C: "calibrating",
  q_T: "over range", q_B: "comms failure", q_good: "good", q_bad: "bad", q_uncertain: "uncertain",
  by_kind: "By device kind", by_severity: "By severity",
  dk_reason: "reason", dk_from: "from", dk_to: "to", dk_after_s: "after (s)", dk_severity: "severity", dk_note: "note",
  dk_assignee: "handler", dk_unit: "unit", dk_text: "text", dk_step: "step", dk_repeat: "repeat", dk_muted: "muted", dk_grid: "grid",
  dk_milestone: "milestone", dk_source: "source", dk_reopens: "reopens", dk_category: "category", dk_place: "place", dk_photo: "photo",
  dk_result: "result", yes: "yes", no: "no", actor_rule: "rules engine", actor_system: "system", rule_cleared: "rule condition cleared",
};
const dicts = { zh, en };
let locale = localStorage.getItem("vigil.locale") || "zh";
let zone = "Asia/Shanghai";
let fmt = null;

export function setup(defaultLocale, timezone) {
  if (!localStorage.getItem("vigil.locale")) locale = defaultLocale;
  zone = timezone;
  fmt = null;
}
export function getLocale() { return locale; }
export function setLocale(l) { locale = l; localStorage.setItem("vigil.locale", l); fmt = null; }
export function t(key, vars) {
  let s = (dicts[locale] && dicts[locale][key]) ?? zh[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replace(`{${k}}`, v);
  return s;
}
export function sev(s) { return t("sev_" + s); }
export function st(s) { return t("st_" + s); }
export function has(key) { return Object.prototype.hasOwnProperty.call(zh, key); }
// A value of a known set (kind, industry, role, category, ...): its label, or the value itself when there is none.
export function label(prefix, value) {
  if (value === null || value === undefined || value === "" || value === "-") return t("unassigned");
  return has(prefix + "_" + value) ? t(prefix + "_" + value) : String(value);
}
export function kindLabel(k) { return label("kind", k); }
export function industryLabel(i) { return label("ind", i); }
export function roleLabel(r) { return label("role", r); }
export function weekdayLabel(d) { return t("wd_" + d); }
// A notification channel is a (masked) Apprise URL: its scheme names the service.
export function channelLabel(url) {
  if (!url) return "–";
  const scheme = String(url).split(":")[0].toLowerCase();
  return has("nch_" + scheme) ? `${t("nch_" + scheme)} (${url})` : String(url);
}
// The console's audit actions: "login", "logout" or "METHOD /route/{param}".
export function auditKey(action) { return "aud_" + String(action).toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_+|_+$/g, ""); }
export function auditLabel(action) { return has(auditKey(action)) ? t(auditKey(action)) : String(action); }
export function fmtTime(ts, withDate = true) {
  if (ts === null || ts === undefined || ts === "") return "";
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  if (!fmt) {
    const lang = locale === "zh" ? "zh-CN" : "en-GB";
    fmt = {
      full: new Intl.DateTimeFormat(lang, { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }),
      time: new Intl.DateTimeFormat(lang, { timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }),
    };
  }
  return (withDate ? fmt.full : fmt.time).format(d);
}
export function toEpoch(ts) {
  if (ts === null || ts === undefined) return null;
  return typeof ts === "number" ? ts : Date.parse(ts) / 1000;
}
export function fmtDur(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.abs(Math.round(seconds));
  const zhl = locale === "zh";
  if (s < 60) return s + (zhl ? " 秒" : " s");
  if (s < 3600) return Math.floor(s / 60) + (zhl ? " 分 " : " min ") + (s % 60) + (zhl ? " 秒" : " s");
  if (s < 86400) return Math.floor(s / 3600) + (zhl ? " 小时 " : " h ") + Math.floor((s % 3600) / 60) + (zhl ? " 分" : " min");
  return Math.floor(s / 86400) + (zhl ? " 天 " : " d ") + Math.floor((s % 86400) / 3600) + (zhl ? " 小时" : " h");
}
export function fmtPct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%"; }
export function summaryOf(a) { return locale === "en" && a.summary_en ? a.summary_en : a.summary; }
export function timeZone() { return zone; }
