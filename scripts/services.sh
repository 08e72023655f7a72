#!/usr/bin/env bash
# Owns local service readiness: PostgreSQL, Redis and RabbitMQ answering, plus the databases and vhosts votes_app expects.
set -euo pipefail

readonly SERVICES=(postgresql redis rabbitmq)
# RabbitMQ can take 10-30 s to boot; leave headroom on a slow machine.
readonly START_TIMEOUT=90
# A failed start usually means a concurrent run won the race; give it a moment to finish.
readonly RETRY_TIMEOUT=10

declare -A HOST=(
	[postgresql]=${VOTES_PG_HOST:-127.0.0.1}
	[redis]=${VOTES_REDIS_HOST:-127.0.0.1}
	[rabbitmq]=${VOTES_AMQP_HOST:-127.0.0.1}
)
declare -A PORT=(
	[postgresql]=${VOTES_PG_PORT:-5432}
	[redis]=${VOTES_REDIS_PORT:-6379}
	[rabbitmq]=${VOTES_AMQP_PORT:-5672}
)
# The start commands below are fixed to these ports, so starting them cannot help any other port.
declare -A START_PORT=([postgresql]=5432 [redis]=6379 [rabbitmq]=5672)
declare -A ENV_PREFIX=([postgresql]=VOTES_PG [redis]=VOTES_REDIS [rabbitmq]=VOTES_AMQP)
declare -A PACKAGE=([postgresql]=postgresql [redis]=redis-server [rabbitmq]=rabbitmq-server)
# Shown to people verbatim, hence the unexpanded $(...).
# shellcheck disable=SC2016
declare -A START_COMMAND=(
	[postgresql]='pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
	[redis]='redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
	[rabbitmq]='rabbitmq-server -detached'
)
declare -A LOG_HINT=(
	[postgresql]=/var/log/postgresql/
	[redis]=/var/log/redis/ci.log
	[rabbitmq]=/var/log/rabbitmq/
)

read -r -a DATABASES <<<"${VOTES_DATABASES:-votes votes_test votes_demo votes_bench votes_faults}"
read -r -a VHOSTS <<<"${VOTES_VHOSTS:-votes_test votes_demo votes_bench votes_faults}"

declare -A PROBLEM=() HINTS=() DETAIL=() NOTES=()
PROBE=""
TEMP_FILES=()
cleanup() {
	# Must never change the exit status the report decided on.
	((${#TEMP_FILES[@]} == 0)) || rm -f -- "${TEMP_FILES[@]}" || true
}
trap cleanup EXIT

say() { printf '%s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
addr() { printf '%s:%s' "${HOST[$1]}" "${PORT[$1]}"; }
sudo_prefix() { ((EUID == 0)) || printf 'sudo '; }

is_loopback() {
	case $1 in
	127.* | localhost | ::1) return 0 ;;
	esac
	return 1
}

# Record a problem for the final report; several can pile up per service.
fail() {
	local svc=$1 reason=$2 hint
	[[ -n $reason ]] && PROBLEM[$svc]+="${PROBLEM[$svc]:+; }$reason"
	shift 2
	for hint in "$@"; do
		HINTS[$svc]+="$hint"$'\n'
	done
}

tcp_open() {
	local host=$1 port=$2
	# A filtered remote port would otherwise block for the kernel's whole connect timeout.
	if have timeout; then
		# shellcheck disable=SC2016 # expanded by the inner bash
		timeout 3 "$BASH" -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
	else
		(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
	fi
}

# --- readiness probes: return 0 when ready, else leave the reason in PROBE ---

up_postgresql() {
	local host=${HOST[postgresql]} port=${PORT[postgresql]}
	if have pg_isready; then
		PROBE=$(pg_isready -h "$host" -p "$port" 2>&1) && return 0
		return 1
	fi
	tcp_open "$host" "$port" && return 0
	PROBE="nothing accepts connections on $host:$port"
	return 1
}

up_redis() {
	local host=${HOST[redis]} port=${PORT[redis]} reply=""
	if have redis-cli; then
		reply=$(redis-cli -h "$host" -p "$port" ping 2>&1) || true
		[[ $reply == PONG ]] && return 0
		PROBE=${reply:-no reply from $host:$port}
		return 1
	fi
	tcp_open "$host" "$port" && return 0
	PROBE="nothing accepts connections on $host:$port"
	return 1
}

# The rabbitmq CLI talks to the node on this machine and refuses anyone but root and rabbitmq.
rabbit_cli_usable() {
	is_loopback "${HOST[rabbitmq]}" || return 1
	((EUID == 0)) || [[ $(id -un 2>/dev/null) == rabbitmq ]]
}

up_rabbitmq() {
	local host=${HOST[rabbitmq]} port=${PORT[rabbitmq]}
	if ! tcp_open "$host" "$port"; then
		PROBE="nothing accepts connections on $host:$port"
		return 1
	fi
	# An open port can still be a node mid-boot or mid-shutdown; ask the node itself when we can.
	rabbit_cli_usable || return 0
	if have rabbitmq-diagnostics; then
		PROBE=$(rabbitmq-diagnostics -q check_running 2>&1) || return 1
	elif have rabbitmqctl; then
		PROBE=$(rabbitmqctl -q -t 5 await_startup 2>&1) || return 1
	fi
	return 0
}

wait_up() {
	local svc=$1 deadline=$((SECONDS + $2))
	until "up_$svc"; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# --- starting ---

pg_version() {
	local dir version=""
	# With several clusters installed the last (usually newest) one is the one to start.
	for dir in /etc/postgresql/*/main; do
		[[ -d $dir ]] || continue
		version=${dir%/main}
		version=${version##*/}
	done
	[[ -n $version ]] && printf '%s\n' "$version"
}

start_postgresql() { pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start; }
start_redis() { redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; }
start_rabbitmq() { rabbitmq-server -detached; }

start_program() {
	case $1 in
	postgresql) printf pg_ctlcluster ;;
	redis) printf redis-server ;;
	rabbitmq) printf rabbitmq-server ;;
	esac
}

down_hints() {
	local svc=$1 sudo
	sudo=$(sudo_prefix)
	fail "$svc" "$2" \
		"install: ${sudo}apt-get install -y ${PACKAGE[$svc]}" \
		"start:   ${sudo}${START_COMMAND[$svc]}"
	if have docker; then
		fail "$svc" "" "or:      docker compose up -d rabbitmq redis postgres"
	fi
	fail "$svc" "" "or point ${ENV_PREFIX[$svc]}_HOST/${ENV_PREFIX[$svc]}_PORT at a running $svc"
}

# Explain why this machine cannot start the service itself, or succeed if it can.
startable() {
	local svc=$1 program
	program=$(start_program "$svc")
	if ! is_loopback "${HOST[$svc]}"; then
		down_hints "$svc" "not answering ($PROBE); ${HOST[$svc]} is not this machine, so it is not started here"
	elif ! have "$program"; then
		down_hints "$svc" "not answering ($PROBE); $program not found (package ${PACKAGE[$svc]} not installed?)"
	elif [[ ${PORT[$svc]} != "${START_PORT[$svc]}" ]]; then
		down_hints "$svc" "not answering ($PROBE); the local start command serves port ${START_PORT[$svc]}, not ${PORT[$svc]}"
	elif [[ $svc == postgresql ]] && ! pg_version >/dev/null; then
		down_hints "$svc" "not answering ($PROBE); no cluster under /etc/postgresql"
	else
		return 0
	fi
	return 1
}

log_tail() {
	local -a lines=()
	local line count
	while IFS= read -r line || [[ -n $line ]]; do
		[[ -n ${line//[[:space:]]/} ]] && lines+=("$line")
	done <"$1"
	count=${#lines[@]}
	((count > 5)) && lines=("${lines[@]:count-5}")
	((${#lines[@]})) && printf ' | %s' "${lines[@]}"
	return 0
}

start_and_wait() {
	local svc=$1 log rc=0
	log=$(mktemp)
	TEMP_FILES+=("$log")
	say "..   starting $svc on $(addr "$svc")"
	# A file, not a pipe: daemons that keep inherited stdout open would stall a command substitution.
	"start_$svc" >"$log" 2>&1 </dev/null || rc=$?
	if ((rc == 0)); then
		wait_up "$svc" "$START_TIMEOUT" && return 0
		down_hints "$svc" "started but not answering after ${START_TIMEOUT} s ($PROBE); see ${LOG_HINT[$svc]}"
		return 1
	fi
	wait_up "$svc" "$RETRY_TIMEOUT" && return 0
	down_hints "$svc" "start failed (exit $rc$(log_tail "$log")); see ${LOG_HINT[$svc]}"
	return 1
}

ensure_up() {
	local svc=$1
	"up_$svc" && return 0
	if tcp_open "${HOST[$svc]}" "${PORT[$svc]}"; then
		# Something already owns the port (most likely booting); a second server would only collide with it.
		say "..   $svc on $(addr "$svc") answers but is not ready yet; waiting"
		wait_up "$svc" "$START_TIMEOUT" && return 0
		fail "$svc" "something answers on $(addr "$svc") but it is not a ready $svc: $PROBE"
		return 1
	fi
	startable "$svc" || return 1
	start_and_wait "$svc"
}

# --- what the project needs inside the services ---

pg_sql() {
	PGCONNECT_TIMEOUT=5 psql -X -w -q -A -t -v ON_ERROR_STOP=1 \
		-h "${HOST[postgresql]}" -p "${PORT[postgresql]}" -U postgres -d postgres -c "$1"
}

db_exists() { [[ $(pg_sql "SELECT 1 FROM pg_database WHERE datname = '$1'" 2>/dev/null) == 1 ]]; }

ensure_databases() {
	local db out
	if ! have psql; then
		fail postgresql "psql not found, so databases ${DATABASES[*]} cannot be checked" \
			"install: $(sudo_prefix)apt-get install -y postgresql-client"
		return 1
	fi
	for db in "${DATABASES[@]}"; do
		# Names go into SQL unescaped, so only plain identifiers are accepted.
		if [[ ! $db =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
			fail postgresql "database name '$db' in VOTES_DATABASES is not a plain identifier"
			continue
		fi
		db_exists "$db" && continue
		# A concurrent run may create it between the check and here; that is success too.
		if ! out=$(pg_sql "CREATE DATABASE \"$db\"" 2>&1) && ! db_exists "$db"; then
			fail postgresql "cannot create database $db: $out" \
				"create it: psql -h ${HOST[postgresql]} -p ${PORT[postgresql]} -U postgres -c 'CREATE DATABASE \"$db\"'"
			continue
		fi
		say "..   created database $db"
	done
	DETAIL[postgresql]="databases: ${DATABASES[*]}"
}

vhost_commands() {
	local vhost
	for vhost in "${VHOSTS[@]}"; do
		printf '%s\n' "rabbitmqctl add_vhost $vhost && rabbitmqctl set_permissions -p $vhost guest \".*\" \".*\" \".*\""
	done
}

ensure_vhosts() {
	local vhost perms vhosts="" out cmd
	if ! have rabbitmqctl || ! rabbit_cli_usable; then
		DETAIL[rabbitmq]="vhosts not checked: no usable local rabbitmqctl"
		NOTES[rabbitmq]="the broker's operator must create vhosts ${VHOSTS[*]} for guest (or run this as root on the broker host):"$'\n'
		while IFS= read -r cmd; do
			NOTES[rabbitmq]+="  $cmd"$'\n'
		done < <(vhost_commands)
		return 0
	fi
	# One call covers the usual case: guest already has full rights on every vhost, so all exist.
	if ! perms=$(rabbitmqctl -s list_user_permissions guest 2>&1); then
		fail rabbitmq "cannot read permissions of user guest: $perms" \
			"rabbitmqctl add_user guest guest   # then rerun this script"
		return 1
	fi
	for vhost in "${VHOSTS[@]}"; do
		[[ $'\n'$perms$'\n' == *$'\n'"$vhost"$'\t.*\t.*\t.*\n'* ]] && continue
		if [[ -z $vhosts ]]; then
			vhosts=$'\n'$(rabbitmqctl -s list_vhosts name 2>/dev/null)$'\n'
		fi
		if [[ $vhosts != *$'\n'"$vhost"$'\n'* ]]; then
			if ! out=$(rabbitmqctl -q add_vhost "$vhost" 2>&1); then
				fail rabbitmq "cannot create vhost $vhost: $out" "$(vhost_commands)"
				continue
			fi
			say "..   created vhost $vhost"
		fi
		if ! out=$(rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' 2>&1); then
			fail rabbitmq "cannot grant guest access to vhost $vhost: $out" "$(vhost_commands)"
			continue
		fi
		say "..   granted guest full access to vhost $vhost"
	done
	DETAIL[rabbitmq]="vhosts: ${VHOSTS[*]}"
}

# The broker's limits (docs/OPERATIONS.md, "Broker limits"), as the compose stack sets them:
# max_message_size from deploy/rabbitmq/rabbitmq.conf, the policies of
# deploy/rabbitmq/definitions.json (`votes broker definitions`) on every local vhost.
readonly BROKER_CONF=deploy/rabbitmq/rabbitmq.conf
readonly BROKER_DEFINITIONS=deploy/rabbitmq/definitions.json

policy_lines() {
	# name, pattern, definition, apply-to, priority: one tab-separated line per policy.
	python3 -c 'import json, sys
for p in json.load(open(sys.argv[1]))["policies"]:
    print(p["name"], p["pattern"], json.dumps(p["definition"], separators=(",", ":")), p["apply-to"], p["priority"], sep="\t")' "$BROKER_DEFINITIONS"
}

ensure_broker_limits() {
	local size current vhost name pattern definition apply priority listed out
	have rabbitmqctl && rabbit_cli_usable || return 0
	[[ -f $BROKER_CONF && -f $BROKER_DEFINITIONS ]] || return 0
	size=$(sed -n 's/^max_message_size *= *\([0-9]*\)$/\1/p' "$BROKER_CONF")
	if [[ -n $size ]]; then
		current=$(rabbitmqctl -q eval 'application:get_env(rabbit, max_message_size).' 2>/dev/null)
		if [[ $current != "{ok,$size}" ]]; then
			if out=$(rabbitmqctl -q eval "application:set_env(rabbit, max_message_size, $size)." 2>&1); then
				say "..   max_message_size set to $size bytes"
			else
				fail rabbitmq "cannot set max_message_size: $out"
			fi
		fi
	fi
	for vhost in / "${VHOSTS[@]}"; do
		# vhost, name, pattern, apply-to, definition, priority: one line per policy.
		listed=$(rabbitmqctl -s list_policies -p "$vhost" 2>/dev/null) || continue
		while IFS=$'\t' read -r name pattern definition apply priority; do
			[[ $'\n'$listed$'\n' == *$'\n'"$vhost"$'\t'"$name"$'\t'"$pattern"$'\t'"$apply"$'\t'"$definition"$'\t'"$priority"$'\n'* ]] && continue
			if out=$(rabbitmqctl -q set_policy -p "$vhost" --apply-to "$apply" --priority "$priority" \
				"$name" "$pattern" "$definition" 2>&1 </dev/null); then
				say "..   policy $name set on vhost $vhost"
			else
				fail rabbitmq "cannot set policy $name on vhost $vhost: $out"
			fi
		done < <(policy_lines)
	done
}

# --- report ---

report() {
	local svc status=0 line
	for svc in "${SERVICES[@]}"; do
		if [[ -z ${PROBLEM[$svc]:-} ]]; then
			say "ok   $svc $(addr "$svc")${DETAIL[$svc]:+ (${DETAIL[$svc]})}"
			while IFS= read -r line; do
				[[ -n $line ]] && say "     $line"
			done <<<"${NOTES[$svc]:-}"
			continue
		fi
		status=1
		{
			say "FAIL $svc $(addr "$svc"): ${PROBLEM[$svc]}"
			while IFS= read -r line; do
				[[ -n $line ]] && say "     $line"
			done <<<"${HINTS[$svc]:-}"
		} >&2
	done
	return "$status"
}

main() {
	local svc
	for svc in "${SERVICES[@]}"; do
		ensure_up "$svc" || continue
		case $svc in
		postgresql) ensure_databases || true ;;
		rabbitmq) ensure_vhosts && ensure_broker_limits || true ;;
		esac
	done
	report
}

main "$@"
