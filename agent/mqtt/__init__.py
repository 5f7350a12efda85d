"""MQTT shared by both ends: the wire format (:mod:`agent.mqtt.wire`: topics, the batch
envelope, answers) and the paho session kept connected (:mod:`agent.mqtt.session`).

The gateway's transport (:mod:`agent.uplink.mqtt`) and the central consumer
(:mod:`agent.receiver.mqtt`) both build on these; neither module imports the agent's
runtime (config, store, uplink loop), so a receiver installs and loads none of it.
"""
